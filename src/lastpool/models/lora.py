"""LoRA fine-tuning of a pretrained backbone: adapters on the projections, the head fully trainable.

A full fine-tune of a 100M+ parameter decoder on a few thousand texts is slow and overfits; LoRA trains
small low-rank updates of the attention and MLP projections instead, and the classifier head in full.

The saved state of a LoRA run is the adapter weights *plus everything outside the backbone* (the head).
Forgetting the head is the classic bug of LoRA classifiers: the adapter reloads, the head comes back
randomly initialised, and the "trained" model predicts noise. ``trainable_state`` always includes it.

PEFT wraps the transformers base model (``HFBackbone.model``) in a ``PeftModel`` whose forward passes
its keyword arguments through unchanged, so ``HFBackbone.forward`` (mask, position ids, no KV cache)
works as before. ``merge_lora`` folds the adapters into the base weights and removes the wrapper.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers.pytorch_utils import Conv1D

from lastpool.errors import ConfigError, ModelLoadError
from lastpool.models.backbones import HFBackbone
from lastpool.models.classifier_model import SequenceClassifier

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_NEOX_LIKE = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]

DEFAULT_TARGETS: dict[str, list[str]] = {
    # Attention and MLP projections, by their leaf module names in transformers' modeling files.
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": _NEOX_LIKE,
    "bloom": _NEOX_LIKE,
    "falcon": _NEOX_LIKE,
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}

# MoE routers are Linear layers inside the blocks, but adapting the routing is not what LoRA is for.
_ROUTER_NAMES = {"gate", "router", "shared_expert_gate"}
_LORA_PREFIX = "base_model.model."  # where PEFT's adapter state dict keys start
_BACKBONE_PREFIX = "backbone.model."  # where lastpool's keys start: the path in the classifier


def _adaptable(module: nn.Module) -> bool:
    """Layers LoRA can wrap: Linear, and GPT-2's Conv1D (a Linear with transposed weight)."""
    return isinstance(module, nn.Linear | Conv1D)


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and _adaptable(module)}


def _block_linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the adaptable layers inside the decoder blocks (ModuleLists), never embeddings."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            names |= {n for n in _leaf_names(module) if n not in _ROUTER_NAMES}
    return sorted(names)


def lora_targets(model_type: str, model: nn.Module) -> list[str]:
    """Module names to adapt: the defaults for a known ``model_type``, else the blocks' Linear layers.

    Defaults are kept only where ``model`` has them, so a model_type reused for another layout still
    falls back to what the model actually contains.
    """
    present = _leaf_names(model)
    known = [name for name in DEFAULT_TARGETS.get(model_type, []) if name in present]
    if known:
        return known
    found = _block_linear_names(model)
    if not found:
        raise ConfigError(f"LoRA: no Linear layers found in the decoder blocks of this {model_type!r} model")
    return found


def _hf_backbone(classifier: SequenceClassifier) -> HFBackbone:
    backbone = classifier.backbone
    if not isinstance(backbone, HFBackbone):
        raise ConfigError("LoRA needs a pretrained (transformers) backbone; the from-scratch model trains in full")
    return backbone


def is_lora(classifier: SequenceClassifier) -> bool:
    """Whether ``classifier``'s backbone currently carries (unmerged) LoRA adapters."""
    backbone = classifier.backbone
    return isinstance(backbone, HFBackbone) and isinstance(backbone.model, PeftModel)


def _peft_model(classifier: SequenceClassifier) -> PeftModel:
    model = _hf_backbone(classifier).model
    if not isinstance(model, PeftModel):
        raise ConfigError("this classifier has no LoRA adapters (apply_lora was not called, or merge_lora was)")
    return model


def _outside_backbone(classifier: SequenceClassifier) -> dict[str, torch.Tensor]:
    """Head (and any pooler) tensors: trained in full, so saved in full."""
    return {name: tensor for name, tensor in classifier.state_dict().items() if not name.startswith("backbone.")}


def apply_lora(classifier: SequenceClassifier, model_type: str, *, r: int, alpha: int, dropout: float) -> None:
    """Wrap the backbone with LoRA adapters in place; freeze the base weights, keep the head trainable.
    (No defaults here: the run's config, or the saved ``LoraSpec``, is the one home of these settings.)

    The adapters' B matrices start at zero, so the classifier's outputs are unchanged until training.
    """
    if r < 1:
        raise ConfigError(f"LoRA rank r must be at least 1, got {r}")
    if alpha <= 0:
        raise ConfigError(f"LoRA alpha must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
    backbone = _hf_backbone(classifier)
    if is_lora(classifier):
        raise ConfigError("LoRA adapters are already applied to this classifier")
    base = backbone.model
    targets = lora_targets(model_type, base)
    # GPT-2's Conv1D stores its weight transposed; telling PEFT up front avoids its warning and guesswork.
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in base.named_modules())
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        fan_in_fan_out=conv1d)
    # A PeftModel, not a PreTrainedModel: it forwards calls and attribute reads (``.config``) to the base
    # model, which is all HFBackbone needs.
    with warnings.catch_warnings():
        # PEFT still reads transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning in v5).
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        backbone.model = get_peft_model(base, config)  # type: ignore[assignment]
    # The new adapter layers (their dropout included) start in training mode whatever the model's mode;
    # an eval-mode classifier would otherwise give random outputs once the adapters are non-zero.
    classifier.train(classifier.training)
    for parameter in classifier.parameters():
        parameter.requires_grad_(False)
    for name, parameter in backbone.model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(True)
    for name, parameter in classifier.named_parameters():
        if not name.startswith("backbone."):
            parameter.requires_grad_(True)


def trainable_state(classifier: SequenceClassifier) -> dict[str, torch.Tensor]:
    """What a LoRA run saves: adapter weights plus the head, keyed by their path in the classifier.

    Adapter keys look like ``backbone.model.layers.0.self_attn.q_proj.lora_A.weight`` (PEFT's own
    adapter-file names, without the adapter name or wrapper prefix), so they do not depend on PEFT's
    wrapper internals. Tensors are detached, contiguous CPU copies, ready for safetensors.
    """
    peft_model = _peft_model(classifier)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in get_peft_model_state_dict(peft_model).items():
        state[_BACKBONE_PREFIX + key.removeprefix(_LORA_PREFIX)] = tensor
    state.update(_outside_backbone(classifier))
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def load_trainable_state(classifier: SequenceClassifier, state: dict[str, torch.Tensor]) -> None:
    """Load what ``trainable_state`` saved into a classifier with the same LoRA setup; strict.

    Missing, unexpected or mis-shaped keys are a ModelLoadError that names them: a partial load (e.g. the
    adapters without the head) would silently give a model that predicts noise.
    """
    peft_model = _peft_model(classifier)
    expected = trainable_state(classifier)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        parts = [f"{label}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
                 if keys]
        raise ModelLoadError(f"LoRA weights do not match this model ({'; '.join(parts)})")
    adapter = {_LORA_PREFIX + k.removeprefix(_BACKBONE_PREFIX): v for k, v in state.items()
               if k.startswith(_BACKBONE_PREFIX)}
    result = set_peft_model_state_dict(peft_model, adapter)
    ignored = sorted(getattr(result, "unexpected_keys", []))
    if ignored:
        raise ModelLoadError(f"LoRA weights not taken by the model: {', '.join(ignored[:5])}")
    outside = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    classifier.load_state_dict(outside, strict=False)


def merge_lora(classifier: SequenceClassifier) -> None:
    """Fold the adapters into the base weights and unwrap: a plain classifier again (same keys as one
    never adapted), for export or inference without PEFT. Every weight is trainable again, as in a fresh
    classifier."""
    peft_model = _peft_model(classifier)
    merged = peft_model.merge_and_unload()
    backbone = _hf_backbone(classifier)
    backbone.model = merged
    for parameter in classifier.parameters():
        parameter.requires_grad_(True)
