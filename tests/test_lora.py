"""LoRA on pretrained backbones: what trains, what is saved (the head!), merging, padding invariance.

Tiny random models built from configs; no downloads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from lastpool.data.batching import PaddingCollator
from lastpool.errors import ConfigError, ModelLoadError
from lastpool.models.backbones import HFBackbone, backbone_from_config
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import GPTBackbone, GPTConfig
from lastpool.models.lora import (
    DEFAULT_TARGETS,
    apply_lora,
    is_lora,
    load_trainable_state,
    lora_targets,
    merge_lora,
    trainable_state,
)

VOCAB = 100
TOKENS: dict[str, Any] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
DECODER: dict[str, Any] = {
    "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, **TOKENS,
}
NARROW: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          **TOKENS}
GPT2 = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                               eos_token_id=2)
LLAMA = transformers.LlamaConfig(**DECODER)

# One tiny config per model_type in DEFAULT_TARGETS (a new default without a config here fails the test).
FAMILIES: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "llama": lambda: transformers.LlamaConfig(**DECODER),
    "mistral": lambda: transformers.MistralConfig(**DECODER),
    "qwen2": lambda: transformers.Qwen2Config(**DECODER),
    "qwen3": lambda: transformers.Qwen3Config(**DECODER, head_dim=8),
    "gemma": lambda: transformers.GemmaConfig(**DECODER, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**DECODER, head_dim=8, query_pre_attn_scalar=8),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**DECODER, head_dim=8, query_pre_attn_scalar=8),
    "olmo": lambda: transformers.OlmoConfig(**DECODER),
    "olmo2": lambda: transformers.Olmo2Config(**DECODER),
    "granite": lambda: transformers.GraniteConfig(**DECODER),
    "stablelm": lambda: transformers.StableLmConfig(**DECODER),
    "smollm3": lambda: transformers.SmolLM3Config(**DECODER),
    "cohere": lambda: transformers.CohereConfig(**DECODER),
    "phi3": lambda: transformers.Phi3Config(**DECODER),
    "phi": lambda: transformers.PhiConfig(**NARROW, intermediate_size=64),
    "starcoder2": lambda: transformers.Starcoder2Config(**DECODER),
    "gpt2": lambda: GPT2,
    "gpt_bigcode": lambda: transformers.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, **TOKENS),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**NARROW, intermediate_size=64),
    "bloom": lambda: transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, **TOKENS),
    "falcon": lambda: transformers.FalconConfig(**NARROW),
    "gptj": lambda: transformers.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, **TOKENS),
    "opt": lambda: transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          ffn_dim=64, word_embed_proj_dim=32, **TOKENS),
}
REQUIRED = {"llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox"}


LORA = {"r": 8, "alpha": 16, "dropout": 0.05}  # the settings these tests were written for

def _classifier(config: transformers.PretrainedConfig, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    backbone = backbone_from_config(config)
    model = SequenceClassifier(backbone, backbone.hidden_size, 3)
    nn.init.normal_(model.head.weight, std=1.0)  # so differences in the pooled vector show in the logits
    return model.eval()


def _batch(seed: int = 1, rows: int = 4, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    return ids, torch.ones_like(ids)


def _train(model: SequenceClassifier, steps: int = 5) -> None:
    """A few Adam steps on random labels: LoRA B leaves zero and the head moves."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = _batch(seed=3, rows=8)
    labels = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(4))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(ids, mask), labels).backward()
        optimizer.step()
    model.eval()


def _base_state(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    backbone = model.backbone
    assert isinstance(backbone, HFBackbone)
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def _rebuild(config: transformers.PretrainedConfig, base: dict[str, torch.Tensor]) -> SequenceClassifier:
    """Same base weights, a different (random) head: what loading a LoRA run starts from."""
    model = _classifier(config, seed=123)
    assert isinstance(model.backbone, HFBackbone)
    model.backbone.model.load_state_dict(base, strict=True)
    return model


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
@torch.no_grad()
def test_apply_lora_trains_only_adapters_and_head(config: transformers.PretrainedConfig) -> None:
    model = _classifier(config)
    ids, mask = _batch()
    before = model(ids, mask)
    total = sum(p.numel() for p in model.parameters())
    r = 2
    # Expected adapter size: r * (in + out) per adapted layer, from the plain model's layers.
    assert isinstance(model.backbone, HFBackbone)
    targets = lora_targets(config.model_type, model.backbone.model)
    expected = 0
    for name, module in model.backbone.model.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            out_features, in_features = module.weight.shape
            if isinstance(module, transformers.pytorch_utils.Conv1D):
                in_features, out_features = out_features, in_features
            expected += r * (in_features + out_features)

    apply_lora(model, config.model_type, r=r, alpha=4, dropout=0.05)
    assert is_lora(model)
    assert not any(m.training for m in model.modules())  # the new adapter layers follow the model's mode
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    assert set(trainable) - lora == {"head.weight", "head.bias"}
    assert lora and all("lora_" in n for n in lora)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") and "lora_" not in n for n in frozen)
    head = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in trainable.values()) == expected + head
    assert sum(p.numel() for p in model.parameters()) == total + expected
    assert expected < 0.15 * total
    assert model.backbone.config.model_type == config.model_type  # the wrapper still reads as the base model
    assert model.backbone.hidden_size == 32
    torch.testing.assert_close(model(ids, mask), before, atol=0, rtol=0)  # B starts at zero


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_trainable_state_round_trip_restores_adapters_and_head(
    config: transformers.PretrainedConfig, tmp_path: Path
) -> None:
    model = _classifier(config)
    base = _base_state(model)
    head_before = model.head.weight.detach().clone()
    apply_lora(model, config.model_type, **LORA)
    _train(model)
    assert not torch.equal(model.head.weight, head_before)
    state = trainable_state(model)
    assert {"head.weight", "head.bias"} <= set(state)
    lora_b = [k for k in state if k.endswith("lora_B.weight")]
    assert lora_b and any(state[k].abs().sum() > 0 for k in lora_b)
    # Stable names: the layer's path in the classifier, no PEFT wrapper prefix or adapter name.
    assert all(k.startswith("backbone.model.") or k.startswith("head.") for k in state)
    assert not any("base_model" in k or ".default." in k for k in state)
    path = tmp_path / "adapter.safetensors"
    save_file(state, str(path))

    reloaded = _rebuild(config, base)
    apply_lora(reloaded, config.model_type, **LORA)
    ids, mask = _batch(seed=5)
    with torch.no_grad():
        expected = model(ids, mask)
        assert not torch.allclose(reloaded(ids, mask), expected, atol=1e-3)  # random head, zero adapters
        load_trainable_state(reloaded, load_file(str(path)))
        torch.testing.assert_close(reloaded(ids, mask), expected, atol=1e-6, rtol=0)
    assert torch.equal(reloaded.head.weight, model.head.weight)


@torch.no_grad()
def test_load_trainable_state_is_strict() -> None:
    model = _classifier(LLAMA)
    apply_lora(model, "llama", **LORA)
    state = trainable_state(model)

    without_head = {k: v for k, v in state.items() if k != "head.weight"}
    with pytest.raises(ModelLoadError, match=r"missing: head\.weight"):
        load_trainable_state(model, without_head)
    adapter_key = next(k for k in state if k.endswith("lora_A.weight"))
    with pytest.raises(ModelLoadError, match="missing: .*lora_A"):
        load_trainable_state(model, {k: v for k, v in state.items() if k != adapter_key})
    with pytest.raises(ModelLoadError, match=r"unexpected: extra\.weight"):
        load_trainable_state(model, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match=r"wrong shape: head\.bias"):
        load_trainable_state(model, {**state, "head.bias": torch.zeros(5)})

    other = _classifier(LLAMA)
    apply_lora(other, "llama", **{**LORA, "r": 4})  # a different rank: every adapter tensor has the wrong shape
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_trainable_state(other, state)


def test_merge_lora_gives_plain_classifier_with_same_logits() -> None:
    for config in (LLAMA, GPT2):
        model = _classifier(config)
        plain_keys = list(model.state_dict())
        plain_type = type(model.backbone.model)
        apply_lora(model, config.model_type, **LORA)
        _train(model)
        ids, mask = _batch(seed=6)
        with torch.no_grad():
            unmerged = model(ids, mask)
            merge_lora(model)
            merged = model(ids, mask)
        assert not is_lora(model)
        assert type(model.backbone.model) is plain_type
        assert list(model.state_dict()) == plain_keys
        assert all(p.requires_grad for p in model.parameters())
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
        with pytest.raises(ConfigError, match="no LoRA adapters"):
            trainable_state(model)


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_padding_invariance_with_lora(config: transformers.PretrainedConfig) -> None:
    """Batch vs alone, right and left padding: the wrapper must still pass mask and position ids."""
    model = _classifier(config)
    apply_lora(model, config.model_type, **LORA)
    _train(model)
    generator = torch.Generator().manual_seed(7)
    texts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (1, 4, 9, 6)]
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)) for ids in texts])
        for side in ("right", "left"):
            batch = PaddingCollator(0, side)([(ids, 0) for ids in texts])
            batched = model(batch["input_ids"], batch["attention_mask"])
            torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0, msg=f"{side} padding")


def test_every_default_family_has_a_test_config() -> None:
    assert set(DEFAULT_TARGETS) == set(FAMILIES)
    assert set(DEFAULT_TARGETS) >= REQUIRED


@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_default_targets_exist_and_adapt(family: str) -> None:
    config = FAMILIES[family]()
    assert config.model_type == family
    model = _classifier(config)
    assert isinstance(model.backbone, HFBackbone)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.backbone.model.named_modules()}
    missing = [name for name in DEFAULT_TARGETS[family] if name not in leaves]
    assert not missing, f"{family}: no module named {missing}"
    assert lora_targets(family, model.backbone.model) == DEFAULT_TARGETS[family]
    ids, mask = _batch()
    before = model(ids, mask)
    apply_lora(model, family, **LORA)
    adapted = {name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters()
               if ".lora_A." in name}
    assert adapted == set(DEFAULT_TARGETS[family])
    torch.testing.assert_close(model(ids, mask), before, atol=1e-6, rtol=0)


def test_fallback_targets_are_block_linears() -> None:
    llama = _classifier(LLAMA).backbone
    gpt2 = _classifier(GPT2).backbone
    assert isinstance(llama, HFBackbone) and isinstance(gpt2, HFBackbone)
    assert lora_targets("somenewmodel", llama.model) == sorted(DEFAULT_TARGETS["llama"])
    # A known model_type whose layout differs: fall back to what the model contains.
    assert lora_targets("llama", gpt2.model) == ["c_attn", "c_fc", "c_proj"]
    embeddings_only = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))  # a Linear, but outside any block
    with pytest.raises(ConfigError, match="no Linear layers"):
        lora_targets("somenewmodel", embeddings_only)


def test_misuse_is_a_config_error() -> None:
    scratch = SequenceClassifier(GPTBackbone(GPTConfig(vocab_size=VOCAB, d_model=32, n_heads=4, d_ff=64)), 32, 3)
    with pytest.raises(ConfigError, match="pretrained"):
        apply_lora(scratch, "gpt2", **LORA)
    model = _classifier(LLAMA)
    with pytest.raises(ConfigError, match="rank"):
        apply_lora(model, "llama", **{**LORA, "r": 0})
    with pytest.raises(ConfigError, match="dropout"):
        apply_lora(model, "llama", **{**LORA, "dropout": 1.0})
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        trainable_state(model)
    apply_lora(model, "llama", **LORA)
    with pytest.raises(ConfigError, match="already"):
        apply_lora(model, "llama", **LORA)
