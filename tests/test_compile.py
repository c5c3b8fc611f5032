"""``--compile``: compiled decoder blocks train like eager ones, and leave nothing compiled behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lastpool import Classifier
from lastpool.models.backbones import block_list
from tests.conftest import TINY_KW, demo_sample
from tests.test_cli import run_fail
from tests.test_pretrained import TINY, llama_folder  # noqa: F401  (the fixture)


def _compiled(model: nn.Module) -> list[bool]:
    return [block._compiled_call_impl is not None for block in block_list(model)]


@pytest.mark.parametrize("family", ["llama", "llama-lora", "scratch"])
def test_compiled_training_matches_eager_and_leaves_plain_modules(llama_folder: Path, tmp_path: Path,  # noqa: F811
                                                                  family: str) -> None:
    texts, labels = demo_sample()
    # The scratch decoder without dropout: compiled code draws its random numbers differently.
    model = ({"model": str(llama_folder)} if family == "llama"
             else {"model": str(llama_folder), "mode": "lora", "lr": 1e-3} if family == "llama-lora"
             else {**TINY_KW, "dropout": 0.0})
    settings = {**TINY, **model, "seed": 0}
    plain = Classifier(**settings).fit(texts, labels)
    compiled = Classifier(**settings, compile=True).fit(texts, labels)
    # Inductor fuses the elementwise ops, so float sums run in another order: close, not bitwise.
    assert plain.result is not None and compiled.result is not None
    for a, b in zip(plain.result.history, compiled.result.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert np.allclose(plain.predict_proba(texts), compiled.predict_proba(texts), atol=1e-4)
    assert compiled.model is not None and not any(_compiled(compiled.model))
    # What was saved is an ordinary model: it loads and predicts the same.
    loaded = Classifier.load(compiled.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict_proba(texts[:8]), compiled.predict_proba(texts[:8]))


def test_a_compiler_failure_is_one_clear_error(llama_folder: Path, tmp_path: Path,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Inductor needs a C++ compiler on CPU; without one the run stops with one line, exit 2."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # nothing compiled earlier may be reused
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-compiler"),))
    texts, labels = demo_sample()
    data = tmp_path / "data"
    data.mkdir()
    csv = data / "train.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in zip(texts, labels, strict=True)))
    line = run_fail(capsys, data, "train", "--data", str(csv), "--model", str(llama_folder), "--compile",
                    "--mode", "full", "--epochs", "1", "--batch-size", "16", "--max-length", "32",
                    "--precision", "fp32", "--out", str(tmp_path / "run"), "--quiet")
    assert "--compile" in line and "without --compile" in line
    assert not (tmp_path / "run").exists()
    torch._dynamo.reset()


def test_compile_is_refused_with_several_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = demo_sample()
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in zip(texts, labels, strict=True)))
    line = run_fail(capsys, tmp_path, "train", "--data", str(csv), "--compile", "--num-processes", "2")
    assert "compile" in line and "one process" in line
