"""top-N on cached hidden states (training/upper_blocks.py): the same training as the ordinary loop, without
running the frozen blocks in every epoch; families whose forward pass the cache cannot reproduce train the
ordinary way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from lastpool import Classifier
from lastpool.config import RunConfig
from lastpool.data.batching import EncodedDataset
from lastpool.models.backbones import HFBackbone, backbone_from_config, decoder_blocks, running_blocks
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import position_ids_from_mask
from lastpool.tasks import SingleLabel
from lastpool.training.features import freeze_for_mode
from lastpool.training.trainer import Trainer
from lastpool.training.upper_blocks import HiddenCollator, HiddenStates, UpperBlocks, hidden_after, reproduces
from tests.conftest import demo_sample
from tests.test_pretrained import _model_folder

VOCAB, PAD = 60, 0


def _backbone(family: str, seed: int = 0) -> HFBackbone:
    torch.manual_seed(seed)
    if family == "llama":
        config: LlamaConfig | GPT2Config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
    else:
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    return backbone_from_config(config)


def _classifier(family: str = "llama", seed: int = 0) -> SequenceClassifier:
    backbone = _backbone(family, seed)
    torch.manual_seed(seed + 1)
    return SequenceClassifier(backbone, hidden_size=32, num_labels=3, head_bias=False)


def _ids(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(2, 12))).tolist() for _ in range(n)]


def test_the_blocks_run_in_two_parts_give_the_whole_models_output() -> None:
    backbone = _backbone("llama").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [3, 4, 5, PAD, PAD]])
    mask = (ids != PAD).long()
    positions = position_ids_from_mask(mask)
    norm = backbone.model.norm
    with torch.no_grad():
        whole = backbone(ids, attention_mask=mask, position_ids=positions)
        with running_blocks(backbone, 0, 2):
            lower = backbone(ids, attention_mask=mask, position_ids=positions)
        with running_blocks(backbone, 2, 3):
            upper = backbone(None, attention_mask=mask, position_ids=positions, inputs_embeds=lower)
    real = mask.bool()
    torch.testing.assert_close(upper[real], whole[real], atol=1e-5, rtol=1e-5)
    assert len(decoder_blocks(backbone.model)) == 3 and backbone.model.norm is norm  # put back as they were


def test_the_check_passes_for_llama_and_fails_where_the_forward_adds_position_embeddings() -> None:
    ids = _ids(16)
    assert reproduces(_classifier("llama"), 2, ids, PAD, "right")
    assert reproduces(_classifier("llama"), 1, ids, PAD, "left")
    assert not reproduces(_classifier("gpt2"), 2, ids, PAD, "right")  # GPT-2 adds wpe to inputs_embeds


def test_left_and_right_padding_of_cached_states_give_the_same_logits() -> None:
    model = _classifier().eval()
    hidden = hidden_after(model, 2, _ids(6), PAD, "fp32")
    upper = UpperBlocks(model, 2)
    with torch.no_grad():
        right = HiddenCollator("right")([(h, 0) for h in hidden])
        left = HiddenCollator("left")([(h, 0) for h in hidden])
        torch.testing.assert_close(upper(right["inputs_embeds"], right["attention_mask"]),
                                   upper(left["inputs_embeds"], left["attention_mask"]), atol=1e-5, rtol=1e-5)


def test_training_on_cached_states_ends_where_the_ordinary_loop_ends() -> None:
    """Same init, same batches, same loss: the top block, norm and head finish with the same weights."""
    ids, y = _ids(48), [i % 3 for i in range(48)]
    cfg = RunConfig(model="tiny", mode="top-1", epochs=2, batch_size=8, lr=3e-3, warmup=0.1, weight_decay=0.01,
                    token_dropout=0.0, label_smoothing=0.0, precision="fp32", patience=None, baseline=False)
    ordinary, cached = _classifier(), _classifier()
    for model in (ordinary, cached):
        freeze_for_mode(model, "top-1")
    train, val = slice(0, 40), slice(40, 48)
    plain = Trainer(cfg, PAD, SingleLabel(["a", "b", "c"], label_smoothing=cfg.label_smoothing), quiet=True).fit(
        ordinary, EncodedDataset(ids[train], y[train]), EncodedDataset(ids[val], y[val]))
    hidden = hidden_after(cached, 2, ids, PAD, "fp32")
    fast = Trainer(cfg, PAD, SingleLabel(["a", "b", "c"], label_smoothing=cfg.label_smoothing), quiet=True).fit(
        UpperBlocks(cached, 2), HiddenStates(hidden[train], y[train], ids[train]),
        HiddenStates(hidden[val], y[val], ids[val]))
    assert plain.optimizer_steps == fast.optimizer_steps > 0
    trained = {name: p for name, p in ordinary.named_parameters() if p.requires_grad}
    assert any(name.startswith("backbone.model.layers.2.") for name in trained)
    for name, p in cached.named_parameters():
        if name in trained:
            torch.testing.assert_close(p, trained[name], atol=2e-5, rtol=1e-4)
        else:  # frozen: untouched
            assert not p.requires_grad
    assert plain.val_logits is not None and fast.val_logits is not None
    np.testing.assert_allclose(fast.val_logits, plain.val_logits, atol=1e-4)


def test_top_n_fit_caches_the_frozen_blocks_and_saves_an_ordinary_model(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), mode="top-1", layer=None, epochs=2, max_length=32,
                     precision="fp32").fit(texts, labels)
    assert clf.lower_blocks_cached == 1 and clf.cache_note is None
    assert clf.validation is not None and clf.spec is not None
    # The kept epoch's validation logits (from the cache) are what the saved model predicts from text.
    loaded = Classifier.load(clf.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.logits(clf.validation["texts"]), clf.validation["logits"], atol=1e-4)


@pytest.mark.parametrize(("family", "overrides", "why"), [
    ("gpt2", {}, "do not reproduce this GPT2Model"),
    ("llama", {"token_dropout": 0.1}, "token dropout"),
])
def test_top_n_trains_the_ordinary_way_where_the_cache_cannot_apply(
        tmp_path: Path, family: str, overrides: dict[str, float], why: str) -> None:
    folder = _model_folder(tmp_path, family)
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), mode="top-1", layer=None, epochs=1, max_length=32, precision="fp32",
                     **overrides).fit(texts, labels)
    assert clf.lower_blocks_cached is None
    assert clf.cache_note is not None and why in clf.cache_note
    assert clf.result is not None and clf.result.optimizer_steps > 0


def test_a_cached_top_n_run_resumes_exactly(tmp_path: Path) -> None:
    from lastpool.training.checkpoint import CheckpointSettings, list_checkpoints, load_checkpoint

    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    settings = dict(model=str(folder), mode="top-1", layer=None, epochs=2, batch_size=16, max_length=32,
                    precision="fp32")
    ck = CheckpointSettings(tmp_path / "ck", every=3, keep=100)
    full = Classifier(**settings).fit(texts, labels, checkpoints=ck)
    assert full.lower_blocks_cached == 1 and full.model is not None
    middle = list_checkpoints(ck.folder)[1]
    resumed = Classifier(**settings).fit(texts, labels, resume=load_checkpoint(middle))
    assert resumed.model is not None and resumed.result is not None and full.result is not None
    state, again = full.model.state_dict(), resumed.model.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    assert [r["val_loss"] for r in resumed.result.history] == [r["val_loss"] for r in full.result.history]


def test_bf16_training_on_cached_states_keeps_float32_weights(tmp_path: Path) -> None:
    """bf16: the cache holds bf16 states (what the bf16 working weights read); the model ends in float32."""
    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    clf = Classifier(model=str(folder), mode="top-1", layer=None, epochs=1, max_length=32, precision="bf16"
                     ).fit(texts, labels)
    assert clf.lower_blocks_cached == 1 and clf.model is not None and clf.result is not None
    assert all(p.dtype == torch.float32 for p in clf.model.parameters())
    assert clf.result.optimizer_steps > 0 and np.isfinite(clf.result.val_metrics["loss"])
