"""Pretrained (transformers) backbones end to end: train, save, load, predict, without any download.

A tiny random Llama is saved as a local model folder with a tokenizer, exactly as a downloaded model
would be; lastpool must fine-tune it, save a self-contained model folder and load it back offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lastpool import Classifier
from lastpool.classifier import bf16_is_fast, resolve_precision
from lastpool.cli import main
from lastpool.text.tokenizers import train_bpe
from tests.conftest import demo_sample, write_csv

TINY = {"epochs": 2, "batch_size": 16, "max_length": 32, "lr": 3e-3, "precision": "fp32", "fuse_baseline": False}


def _model_folder(root: Path, family: str) -> Path:
    """A local folder as `save_pretrained` writes it: config.json, safetensors weights, tokenizer."""
    texts, _ = demo_sample()
    tokenizer = train_bpe(texts, 300)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=64, tie_word_embeddings=True))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    folder = root / f"tiny-{family}"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_folder(tmp_path_factory.mktemp("hf"), "llama")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fit_save_load_predict_identical(tmp_path: Path, family: str) -> None:
    folder = _model_folder(tmp_path, family)
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), seed=0, **TINY).fit(texts, labels)
    assert clf.spec is not None and clf.spec.backbone.type == "pretrained"
    assert clf.spec.tokenizer.source == str(folder)  # the model's own tokenizer by default
    saved = clf.save(tmp_path / "saved")
    # Self-contained: the original folder is not needed to load the fine-tuned model.
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()
    loaded = Classifier.load(saved)
    probe = texts[:12]
    assert np.array_equal(clf.predict_proba(probe), loaded.predict_proba(probe))
    assert clf.predict(probe) == loaded.predict(probe)


def test_batch_equals_alone_after_fine_tune(llama_folder: Path) -> None:
    texts, labels = demo_sample()
    for side in ("right", "left"):
        clf = Classifier(model=str(llama_folder), padding_side=side, **TINY).fit(texts, labels)
        batch = clf.predict_proba(texts[:10])
        alone = np.stack([clf.predict_proba([t])[0] for t in texts[:10]])
        np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_only_the_backbone_weights_are_loaded_pretrained(llama_folder: Path) -> None:
    """Fine-tuning starts from the folder's weights, not from a random init."""
    from safetensors.torch import load_file

    texts, labels = demo_sample()
    clf = Classifier(model=str(llama_folder), max_steps=1, **{**TINY, "lr": 1e-12}).fit(texts, labels)
    original = load_file(str(llama_folder / "model.safetensors"))
    assert clf.model is not None
    state = clf.model.backbone.model.state_dict()
    key = "embed_tokens.weight"
    torch.testing.assert_close(state[key], original[f"model.{key}"], atol=1e-6, rtol=0)


def test_cli_train_with_pretrained_folder(tmp_path: Path, llama_folder: Path) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    out = tmp_path / "run"
    code = main(["train", "--model", str(llama_folder), "--data", str(data), "--out", str(out), "--quiet",
                 "--epochs", "1", "--max-length", "32", "--precision", "fp32"])
    assert code == 0
    spec = json.loads((out / "model" / "lastpool.json").read_text())
    assert spec["backbone"]["type"] == "pretrained" and spec["backbone"]["model_type"] == "llama"
    assert spec["backbone"]["kind"] == "folder"
    assert "lm_head.weight" not in str(spec)  # base model only


def test_bpe_tokenizer_with_pretrained_model_is_refused(tmp_path: Path, llama_folder: Path, capsys) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    code = main(["train", "--model", str(llama_folder), "--tokenizer", "bpe", "--data", str(data),
                 "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "needs its own tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_model_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    code = main(["train", "--model", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_precision_resolution() -> None:
    assert resolve_precision("fp32", pretrained=True) == "fp32"
    assert resolve_precision("bf16", pretrained=False) == "bf16"
    assert resolve_precision("auto", pretrained=False) == "fp32"
    assert resolve_precision("auto", pretrained=True) == ("bf16" if bf16_is_fast() else "fp32")


def test_bf16_training_runs_and_is_recorded(llama_folder: Path, tmp_path: Path) -> None:
    texts, labels = demo_sample()
    clf = Classifier(model=str(llama_folder), **{**TINY, "precision": "bf16"}).fit(texts, labels)
    assert clf.spec is not None and clf.spec.precision == "bf16"
    proba = clf.predict_proba(texts[:5])
    assert proba.shape == (5, 3) and np.all(np.isfinite(proba))
    loaded = Classifier.load(clf.save(tmp_path / "m"))
    assert loaded.spec is not None and loaded.spec.precision == "bf16"
    assert np.array_equal(loaded.predict_proba(texts[:5]), proba)


def test_probe_trains_only_the_head_and_reuses_cached_features(tmp_path: Path, llama_folder: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("LASTPOOL_CACHE", str(tmp_path / "cache"))
    texts, labels = demo_sample()
    kw = {**TINY, "mode": "probe", "epochs": 3}
    first = Classifier(model=str(llama_folder), **kw).fit(texts, labels)
    assert first.feature_cache_hits == [False]
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 1
    original = load_file(str(llama_folder / "model.safetensors"))
    assert first.model is not None
    torch.testing.assert_close(first.model.backbone.model.state_dict()["norm.weight"], original["model.norm.weight"])
    second = Classifier(model=str(llama_folder), **{**kw, "lr": 0.01}).fit(texts, labels)
    assert second.feature_cache_hits == [True]
    other_split = Classifier(model=str(llama_folder), **{**kw, "seed": 5}).fit(texts, labels)
    assert other_split.feature_cache_hits == [True]  # same texts, another split: same features
    third = Classifier(model=str(llama_folder), **{**kw, "pooling": "mean"}).fit(texts, labels)
    assert third.feature_cache_hits == [False]  # pooling is part of the key
    # The probe's predictions come from the full model (backbone + head) and match the cached features.
    assert first.spec is not None and first.spec.mode == "probe"
    loaded = Classifier.load(first.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict_proba(texts[:8]), first.predict_proba(texts[:8]))


def test_top_n_trains_last_blocks_norm_and_head(llama_folder: Path) -> None:
    from lastpool.training.features import freeze_for_mode

    texts, labels = demo_sample()
    clf = Classifier(model=str(llama_folder), **{**TINY, "mode": "top-1", "layer": None, "max_steps": 1}
                     ).fit(texts, labels)
    assert clf.model is not None
    trainable = {n for n, p in clf.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.model.layers.1.") for n in trainable)
    assert not any(n.startswith("backbone.model.layers.0.") for n in trainable)
    assert "backbone.model.norm.weight" in trainable and "head.weight" in trainable
    assert not any("embed_tokens" in n for n in trainable)
    freeze_for_mode(clf.model, "full")
    assert all(p.requires_grad for p in clf.model.parameters())


def test_invalid_mode_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--mode", "top-0", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "mode" in capsys.readouterr().err


def test_lora_save_load_identical_and_needs_its_base(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), mode="lora", lora_r=4, **{**TINY, "lr": 1e-2}).fit(texts, labels)
    assert clf.model is not None and clf.spec is not None and clf.spec.lora is not None
    trainable = {n for n, p in clf.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    saved = clf.save(tmp_path / "lora-model")
    size_adapter = (saved / "model.safetensors").stat().st_size
    assert size_adapter < (folder / "model.safetensors").stat().st_size  # adapter + head only
    loaded = Classifier.load(saved)
    probe = texts[:10]
    assert np.array_equal(loaded.predict_proba(probe), clf.predict_proba(probe))  # head restored too
    # Without the base model the folder cannot be used, and the message names what is missing.
    (folder / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(Exception) as excinfo:
        Classifier.load(saved)
    assert "needs its base model" in str(excinfo.value) and str(folder) in str(excinfo.value)


def test_lora_merge_stores_full_weights(tmp_path: Path, llama_folder: Path) -> None:
    texts, labels = demo_sample()
    clf = Classifier(model=str(llama_folder), mode="lora", merge=True, **{**TINY, "lr": 1e-2}).fit(texts, labels)
    assert clf.spec is not None and clf.spec.lora is not None and clf.spec.lora.merged
    loaded = Classifier.load(clf.save(tmp_path / "merged"))
    np.testing.assert_allclose(loaded.predict_proba(texts[:10]), clf.predict_proba(texts[:10]), atol=1e-6)
    assert loaded.model is not None
    assert not any("lora_" in n for n, _ in loaded.model.named_parameters())


def test_lora_needs_a_pretrained_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--mode", "lora", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "needs a pretrained --model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bf16_inference_runs_on_a_bf16_copy_and_keeps_float32_weights(llama_folder: Path) -> None:
    from lastpool.evaluation.calibration import softmax
    from lastpool.training.inference import predict_logits

    texts, labels = demo_sample()
    clf = Classifier(model=str(llama_folder), **{**TINY, "precision": "bf16"}).fit(texts, labels)
    proba = clf.predict_proba(texts[:6])
    assert clf.model is not None and clf.encoder is not None and clf._bf16_runner is not None
    runner = clf._bf16_runner[1]
    assert all(p.dtype == torch.bfloat16 for p in runner.parameters())
    assert all(p.dtype == torch.float32 for p in clf.model.parameters())  # training and saving stay float32
    assert clf.spec is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the float32 model under autocast
        autocast = softmax(predict_logits(clf.model, clf.encoder.encode(texts[:6]), clf.encoder.pad_token_id),
                           clf.spec.temperature)
    np.testing.assert_allclose(proba, autocast, atol=0.02)  # the same model, up to bf16 rounding
    clf.fit(texts, labels)  # a new model: the copy is remade
    clf.predict_proba(texts[:2])
    assert clf._bf16_runner is not None and clf._bf16_runner[1] is not runner


def test_optimizer_uses_the_fused_adamw_kernel() -> None:
    from lastpool.training.optimization import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert optimizer.defaults["fused"] is True
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # no decay on biases and norms
