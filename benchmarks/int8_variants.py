"""Which matmuls int8 can take: dynamic quantization of one fp32 ONNX export, several ways, each scored
against the fp32 file on the same texts (label agreement) and timed (texts/s, after a warm-up).

Variants: every matmul (ONNX Runtime's default), all but the MLP's output projections (``down_proj``: their
input, act(gate) * up, carries LLMs' outlier activations), that and the head too, the MLP alone, and every
matmul with full-range (8-bit) weights. The input file is an ``export --format onnx`` of a trained model
(``benchmarks/predict_scale.py`` leaves one in its work folder as ``fp32.onnx``).

    python benchmarks/int8_variants.py --onnx /tmp/ps/fp32.onnx [--texts 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from lastpool.data.tables import read_table
from lastpool.export import OnnxClassifier

FPB = Path(__file__).resolve().parents[2] / "shared" / "data" / "financial_phrasebank" / "sentences_allagree.txt"


def with_metadata(path: Path, source: Path) -> None:
    """The fp32 file's metadata (labels, tokenizer, task) on a quantized one, so OnnxClassifier reads it."""
    model = onnx.load(str(path))
    have = {p.key for p in model.metadata_props}
    for prop in onnx.load(str(source), load_external_data=False).metadata_props:
        if prop.key not in have:
            model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(path))


def timed(clf: OnnxClassifier, texts: list[str]) -> tuple[list[Any], float]:
    clf.predict(texts[:16])
    start = time.perf_counter()
    labels = clf.predict(texts)
    return labels, len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=300)
    args = parser.parse_args()
    every = read_table(FPB).texts
    texts = every[:: max(1, len(every) // args.texts)][: args.texts]  # spread over the file
    work = Path(tempfile.mkdtemp(prefix="lastpool-int8-"))
    prepared = work / "prepared.onnx"
    quant_pre_process(str(args.onnx), str(prepared))
    names = [n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node if n.op_type == "MatMul"]
    down = [n for n in names if "down_proj" in n]
    head = [n for n in names if "/head/" in n]
    attention = [n for n in names if "self_attn" in n]
    variants: dict[str, dict[str, Any]] = {
        "every matmul": {},
        "all but down_proj": {"nodes_to_exclude": down},
        "all but down_proj and the head": {"nodes_to_exclude": down + head},
        "the MLP only": {"nodes_to_exclude": attention + head},
        "every matmul, full-range weights": {"reduce_range": False},
    }
    reference, fp32_speed = timed(OnnxClassifier(args.onnx), texts)
    print(f"{len(texts)} texts; fp32 ONNX {fp32_speed:.2f} texts/s")
    print("| int8 variant | label agreement with fp32 | texts/s | vs fp32 |\n|---|---|---|---|")
    for name, options in variants.items():
        path = work / f"{len(options)}-{abs(hash(name))}.onnx"
        quantize_dynamic(str(prepared), str(path), **{"weight_type": QuantType.QInt8, "per_channel": True,
                                                      "reduce_range": True, **options})
        with_metadata(path, args.onnx)
        labels, speed = timed(OnnxClassifier(path), texts)
        agreement = float(np.mean([a == b for a, b in zip(labels, reference, strict=True)]))
        print(f"| {name} | {agreement:.1%} | {speed:.2f} | {speed / fp32_speed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
