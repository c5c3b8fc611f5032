"""Pretrained-decoder backbones: padding invariance per family, loading rules, GGUF cache.

Every family is a tiny random model built from a config (no downloads). The key property: a text's
logits are the same alone and inside a padded batch, with right or left padding, and with pad == EOS
for texts that end in EOS; that needs the attention mask and position ids to reach the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import save_file

from lastpool.data.batching import PaddingCollator
from lastpool.errors import ModelLoadError
from lastpool.fileio import sha256_file
from lastpool.models.backbones import HFBackbone, backbone_from_config, load_backbone
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import position_ids_from_mask

GGUF = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB = 100
LENGTHS = [3, 11, 7, 1, 9]
DECODER: dict[str, Any] = {
    "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
GQA: dict[str, Any] = {**DECODER, "num_key_value_heads": 2}


def _configs() -> dict[str, transformers.PretrainedConfig]:
    """Tiny configs per family; sliding windows of 4 tokens so the windowed masks meet padding too."""
    configs: dict[str, transformers.PretrainedConfig] = {
        "gpt2": transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
        ),
        "llama": transformers.LlamaConfig(**GQA),
        "mistral": transformers.MistralConfig(**GQA, sliding_window=4),
        "qwen2": transformers.Qwen2Config(**GQA, use_sliding_window=True, sliding_window=4, max_window_layers=1),
        "gemma2": transformers.Gemma2Config(**GQA, head_dim=8, query_pre_attn_scalar=8, sliding_window=4),
        "gpt_neox": transformers.GPTNeoXConfig(**DECODER),
        "phi3": transformers.Phi3Config(**GQA),
    }
    if hasattr(transformers, "Gemma3TextConfig"):
        configs["gemma3_text"] = transformers.Gemma3TextConfig(
            **GQA, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
        )
    return configs


CONFIGS = _configs()


def _classifier(config: transformers.PretrainedConfig, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    backbone = backbone_from_config(config)
    model = SequenceClassifier(backbone, backbone.hidden_size, 3, pooling="last")
    torch.nn.init.normal_(model.head.weight, std=1.0)  # so differences in the pooled vector show
    return model.eval()


def _texts(seed: int = 1, end_with: int | None = None) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    texts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in LENGTHS]
    if end_with is not None:
        texts = [ids[:-1] + [end_with] for ids in texts]
    return texts


def _alone(model: SequenceClassifier, texts: list[list[int]]) -> torch.Tensor:
    rows = []
    for ids in texts:
        input_ids = torch.tensor([ids])
        rows.append(model(input_ids, torch.ones_like(input_ids)))
    return torch.cat(rows)


def _batched(model: SequenceClassifier, texts: list[list[int]], pad_id: int, side: str) -> torch.Tensor:
    batch = PaddingCollator(pad_id, side)([(ids, 0) for ids in texts])
    return model(batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("family", sorted(CONFIGS))
@torch.no_grad()
def test_padding_invariance_per_family(family: str) -> None:
    config = CONFIGS[family]
    model = _classifier(config)
    assert isinstance(model.backbone, HFBackbone)
    assert model.backbone.hidden_size == 32
    assert not hasattr(model.backbone.model, "lm_head")  # base model: no vocabulary logits
    expected_attn = "eager" if family == "gemma2" else "sdpa"  # gemma2's logit softcapping needs eager
    assert model.backbone.config._attn_implementation == expected_attn
    texts = _texts()
    alone = _alone(model, texts)
    assert torch.isfinite(alone).all()
    for side in ("right", "left"):
        batched = _batched(model, texts, pad_id=0, side=side)
        torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0, msg=f"{family}, {side} padding")
    # pad == EOS, and every text ends with that id: the mask, not the pad id, decides what is pooled.
    eos = 7
    texts = _texts(seed=2, end_with=eos)
    alone = _alone(model, texts)
    for side in ("right", "left"):
        batched = _batched(model, texts, pad_id=eos, side=side)
        torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0, msg=f"{family}, {side}, pad == EOS")


@torch.no_grad()
def test_position_ids_matter_under_left_padding() -> None:
    """Without position ids GPT-2 counts positions from column 0, so left padding shifts them."""
    torch.manual_seed(0)
    backbone = backbone_from_config(CONFIGS["gpt2"]).eval()
    texts = _texts()
    batch = PaddingCollator(0, "left")([(ids, 0) for ids in texts])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    alone = torch.stack([backbone(torch.tensor([t]), torch.ones(1, len(t), dtype=torch.long))[0, -1] for t in texts])
    with_positions = backbone(ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))[:, -1]
    torch.testing.assert_close(with_positions, alone, atol=1e-4, rtol=0)
    without = backbone.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, -1]
    shifted = [i for i, n in enumerate(LENGTHS) if n < max(LENGTHS)]
    for row in shifted:
        assert not torch.allclose(without[row], alone[row], atol=1e-3), f"row {row} unchanged without position ids"
    longest = LENGTHS.index(max(LENGTHS))
    torch.testing.assert_close(without[longest], alone[longest], atol=1e-4, rtol=0)  # unpadded row is fine


def test_backbone_from_causal_lm_config_has_no_head_and_fp32() -> None:
    config = transformers.LlamaConfig(**GQA, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    config.dtype = torch.bfloat16  # a saved bf16 checkpoint's config must still give a float32 model
    backbone = backbone_from_config(config)
    assert type(backbone.model).__name__ == "LlamaModel"
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}


def _save_tiny_llama(folder: Path) -> HFBackbone:
    torch.manual_seed(3)
    backbone = backbone_from_config(CONFIGS["llama"]).eval()
    backbone.model.save_pretrained(str(folder))
    return backbone


@torch.no_grad()
def test_load_backbone_from_folder(tmp_path: Path) -> None:
    original = _save_tiny_llama(tmp_path / "llama")
    loaded, info = load_backbone(str(tmp_path / "llama"))
    assert info == {"kind": "folder", "source": str(tmp_path / "llama"), "sha256": None, "model_type": "llama"}
    assert not loaded.training
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    ids = torch.randint(1, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(loaded(ids, mask), original(ids, mask), atol=0, rtol=0)


@pytest.mark.parametrize("family,tied", [("llama", True), ("llama", False), ("gemma2", True), ("gpt2", True)])
@torch.no_grad()
def test_load_backbone_from_causal_lm_checkpoint(tmp_path: Path, family: str, tied: bool) -> None:
    """Hub checkpoints are CausalLM folders: the base model takes their weights, the LM head is dropped."""
    config = CONFIGS[family].__class__.from_dict({**CONFIGS[family].to_dict(), "tie_word_embeddings": tied})
    torch.manual_seed(4)
    causal_lm = transformers.AutoModelForCausalLM.from_config(config).eval()
    causal_lm.save_pretrained(str(tmp_path))
    loaded, info = load_backbone(str(tmp_path))
    assert info["model_type"] == config.model_type
    assert not hasattr(loaded.model, "lm_head")
    ids = torch.randint(1, VOCAB, (2, 6))
    expected = causal_lm.base_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(loaded(ids, torch.ones_like(ids)), expected, atol=0, rtol=0)


def test_folder_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    CONFIGS["llama"].save_pretrained(str(folder))
    (folder / "pytorch_model.bin").write_bytes(b"not even loaded")
    with pytest.raises(ModelLoadError, match="pickled weights"):
        load_backbone(str(folder))


def test_folder_with_missing_weights_is_refused(tmp_path: Path) -> None:
    """A checkpoint lacking tensors would leave them random; that must not pass silently."""
    folder = tmp_path / "partial"
    _save_tiny_llama(folder)
    state = backbone_from_config(CONFIGS["llama"]).model.state_dict()
    del state["layers.1.mlp.up_proj.weight"]
    for path in folder.glob("*.safetensors"):
        path.unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing"):
        load_backbone(str(folder))


def test_offline_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as excinfo:
        load_backbone("someone/not-cached-model-xyz")
    message = str(excinfo.value)
    assert "someone/not-cached-model-xyz" in message and "unreachable" in message


def test_bad_sources(tmp_path: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_backbone(str(fake), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backbone(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="not a folder, a .gguf file or a hub id"):
        load_backbone(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="config.json"):
        load_backbone(str(tmp_path))


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"a" * (3 << 20) + b"tail")  # spans several 1 MiB chunks
    import hashlib

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@torch.no_grad()
def test_gguf_load_and_cache(tmp_path: Path) -> None:
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} is not available")
    first, info = load_backbone(str(GGUF), cache_dir=tmp_path)
    digest = sha256_file(GGUF)
    assert info["kind"] == "gguf" and info["sha256"] == digest and info["model_type"] == "llama"
    assert info["cache_hit"] is False
    assert first.hidden_size == 576 and first.config.num_hidden_layers == 30
    cache = tmp_path / "gguf" / digest
    assert (cache / "config.json").is_file() and list(cache.glob("*.safetensors"))
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [digest]  # no temp folder left behind

    second, info2 = load_backbone(str(GGUF), cache_dir=tmp_path)
    assert info2["cache_hit"] is True

    ids = torch.tensor([[1, 504, 3457, 314, 253, 1345, 2]])
    mask = torch.ones_like(ids)
    hidden = first(ids, mask, position_ids_from_mask(mask))
    assert hidden.shape == (1, 7, 576) and torch.isfinite(hidden).all()
    torch.testing.assert_close(second(ids, mask, position_ids_from_mask(mask)), hidden, atol=0, rtol=0)
