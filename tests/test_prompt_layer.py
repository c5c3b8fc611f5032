"""Prompt templates, pooling from a middle layer, and the probe's standardized head.

A prompt turns a pretrained decoder's last token into a question about the text; ``--layer`` pools
an earlier block's hidden states (the later blocks are dropped, not just ignored); the probe trains
its head on standardized features and folds the scaling into the head.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, LlamaConfig

from lastpool import Classifier
from lastpool.cli import main
from lastpool.config import depth_share
from lastpool.errors import ConfigError
from lastpool.models.backbones import backbone_from_config, block_at, truncate_backbone
from lastpool.models.gpt import position_ids_from_mask
from lastpool.text.tokenizers import TextEncoder, train_bpe
from lastpool.training.features import fold_standardization, standardizer
from tests.conftest import demo_sample, write_csv
from tests.test_pretrained import TINY, _model_folder

SUFFIX = " Verdict:"


@pytest.fixture(scope="module")
def bpe():  # noqa: ANN201 - a transformers tokenizer
    texts, _ = demo_sample()
    return train_bpe(texts, 400)


def test_prompt_wraps_each_text(bpe) -> None:  # noqa: ANN001
    plain = TextEncoder(bpe, max_length=64)
    prompted = TextEncoder(bpe, max_length=64, prompt="Review: {text}" + SUFFIX)
    text = "Operating profit rose ."
    assert prompted.encode([text]) == plain.encode(["Review: " + text + SUFFIX])


def test_prompt_suffix_survives_truncation(bpe) -> None:  # noqa: ANN001
    encoder = TextEncoder(bpe, max_length=20, prompt="{text}" + SUFFIX)
    long_text = "net sales increased in the third quarter " * 10
    ids = encoder.encode([long_text, "profit fell ."])
    assert len(ids[0]) <= 20 and len(ids[0]) >= 18  # filled up to the limit, give or take a merge
    tail = TextEncoder(bpe, max_length=64).encode([SUFFIX.strip()])[0][:-1]  # without <eos>
    decoded = bpe.decode(ids[0], skip_special_tokens=True)
    assert decoded.rstrip().endswith("Verdict:")
    assert ids[0][-1] == bpe.eos_token_id and ids[0][-1 - len(tail):-1] == tail
    assert decoded.lstrip().startswith("net sales")  # the text is cut from its end, not its start


def test_prompt_must_hold_the_text_once_and_fit(bpe, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="exactly once"):
        TextEncoder(bpe, max_length=64, prompt="no slot")
    with pytest.raises(ConfigError, match="no room for text"):
        TextEncoder(bpe, max_length=4, prompt="a long instruction before the {text} and after it")
    code = main(["train", "--prompt", "{text} and {text}", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "exactly once" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_prompt_is_saved_and_applied_at_prediction(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    clf = Classifier(epochs=1, prompt="News: {text}" + SUFFIX, seed=0).fit(texts, labels)
    loaded = Classifier.load(clf.save(tmp_path / "m"))
    assert loaded.spec is not None and loaded.spec.prompt == "News: {text}" + SUFFIX
    assert np.array_equal(loaded.predict_proba(texts[:6]), clf.predict_proba(texts[:6]))
    assert clf.encoder is not None and loaded.encoder is not None
    assert loaded.encoder.encode(texts[:3]) == clf.encoder.encode(texts[:3])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_layer_returns_the_hidden_states_after_that_block(family: str) -> None:
    if family == "llama":
        config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    else:
        config = GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    torch.manual_seed(0)
    full = backbone_from_config(config).eval()
    cut = backbone_from_config(config).eval()
    cut.load_state_dict(full.state_dict())
    truncate_backbone(cut, 2)
    ids = torch.randint(3, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    positions = position_ids_from_mask(mask)
    with torch.no_grad():
        reference = full.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                               output_hidden_states=True).hidden_states[2]
        hidden = cut(ids, mask, positions)
    torch.testing.assert_close(hidden, reference, atol=1e-5, rtol=1e-5)
    assert len(cut.state_dict()) < len(full.state_dict())  # block 3 and the final norm are gone
    with pytest.raises(ConfigError, match="between 1 and 2"):
        truncate_backbone(cut, 3)


@pytest.mark.parametrize("mode", ["full", "lora", "probe"])
def test_layer_model_saves_and_loads_identically(tmp_path: Path, mode: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LASTPOOL_CACHE", str(tmp_path / "cache"))
    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), layer=1, mode=mode, prompt="{text}" + SUFFIX, **TINY).fit(texts, labels)
    saved = clf.save(tmp_path / "m")
    spec = json.loads((saved / "lastpool.json").read_text())
    assert spec["backbone"]["layer"] == 1
    assert spec["backbone"]["config"]["num_hidden_layers"] == 2  # the source's config, for provenance
    if mode != "lora":
        names = set(load_file(str(saved / "model.safetensors")))
        assert not any(".layers.1." in n for n in names) and "backbone.model.norm.weight" not in names
    loaded = Classifier.load(saved)
    assert np.array_equal(loaded.predict_proba(texts[:8]), clf.predict_proba(texts[:8]))


def test_layer_middle_cuts_the_model_at_half_its_depth(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, "llama")  # 2 blocks
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), layer="middle", mode="full", **TINY).fit(texts, labels)
    assert clf.spec is not None and clf.spec.backbone.layer == 1  # type: ignore[union-attr]
    assert clf.config.layer == "middle"  # the config keeps what was asked; the model folder says the block


def test_a_share_of_the_depth_names_the_block_at_it_rounded_up() -> None:
    """``--layer P/Q`` is block ceil(P/Q x depth), at least the first: ``middle`` is 1/2 (15 of 30), 2/3 is
    20 of 30, 1/1 the last; a block number, ``auto`` and no layer name no share."""
    config = LlamaConfig(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=30,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    backbone = backbone_from_config(config)
    shares = ["middle", "1/2", "2/3", "1/30", "1/31", "1/1", "29/30"]
    assert [block_at(backbone, depth_share(s)) for s in shares] == [15, 15, 20, 1, 1, 30, 29]  # type: ignore[arg-type]
    assert depth_share("2/3") == Fraction(2, 3) and depth_share(3) is None and depth_share("auto") is None
    assert depth_share(None) is None


def test_layer_as_a_share_of_the_depth_cuts_the_model_there(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, "llama")  # 2 blocks
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), layer="1/2", mode="full", **TINY).fit(texts, labels)
    assert clf.spec is not None and clf.spec.backbone.layer == 1  # type: ignore[union-attr]
    assert clf.config.layer == "1/2"
    with pytest.raises(ConfigError, match="names a block past the last"):
        Classifier(model=str(folder), layer="4/3", mode="full", **TINY).fit(texts, labels)


def test_layer_needs_a_pretrained_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    code = main(["train", "--data", str(data), "--layer", "1", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "--layer applies to pretrained models" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_layer_beyond_the_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _model_folder(tmp_path, "gpt2")
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    code = main(["train", "--model", str(folder), "--data", str(data), "--layer", "9", "--out",
                 str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "layer must be between 1 and 2" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_folded_standardization_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    features = torch.randn(50, 6) * torch.tensor([1.0, 100.0, 0.01, 5.0, 1.0, 0.0]) + 3.0  # one constant dim
    mean, std = standardizer(features)
    assert torch.all(std > 0) and std[5] == 1.0
    head = torch.nn.Linear(6, 3)
    expected = head((features - mean) / std)
    fold_standardization(head, mean, std)
    torch.testing.assert_close(head(features), expected, atol=1e-4, rtol=1e-4)
