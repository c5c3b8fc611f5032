"""Pretrained decoder backbones (Hub id, local folder or GGUF file) that return hidden states.

The classifier needs hidden states [B, T, D], never vocabulary logits, so backbones are the transformers
*base* models (``AutoModel``: no LM head). Each one is fed the attention mask and the position ids
derived from it (counted from each row's first real token): without them an absolute-position model
such as GPT-2 would see shifted positions under left padding, and a padded row would differ from the
same text alone.

Weights come only from safetensors (a pickle can run code when loaded). A GGUF file is dequantized to
float32 by transformers, which is slow (~16 s for a 135M model), so the float weights are cached as
safetensors under ``$LASTPOOL_CACHE/gguf/<sha256 of the file>`` and later loads take seconds.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from lastpool.errors import ConfigError, ModelLoadError
from lastpool.fileio import default_cache_dir, sha256_file
from lastpool.hub import load_failure, looks_local, offline

GGUF_MAGIC = b"GGUF"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


class HFBackbone(nn.Module):
    """A transformers base decoder behind the backbone interface ``(ids, mask, positions) -> hidden``."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states; configs name it hidden_size, n_embd or d_model."""
        return hidden_size_of(self.model.config)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states from token ids, or from ``inputs_embeds`` (what the first block it runs reads:
        the embeddings, or inside ``running_blocks`` the hidden states of the block below)."""
        # use_cache=False: a classifier runs one pass per batch; a KV cache only costs memory.
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            return_dict=True,
        )
        hidden: torch.Tensor = outputs.last_hidden_state
        return hidden


def hidden_size_of(config: PretrainedConfig) -> int:
    """The model width from a (possibly composite, e.g. multimodal) config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelLoadError(f"cannot tell the hidden size of a {config.model_type!r} model from its config")


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def decoder_blocks(base: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList directly under the base model."""
    lists = [child for _, child in base.named_children() if isinstance(child, nn.ModuleList)]
    if not lists:
        raise ModelLoadError(f"cannot find the decoder blocks of {type(base).__name__}")
    return max(lists, key=len)


def block_list(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the longest ModuleList anywhere in the model (through LoRA wrappers too)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")
    return max(lists, key=len)


@contextmanager
def running_blocks(backbone: HFBackbone, start: int, stop: int) -> Iterator[None]:
    """Inside: the backbone runs blocks ``start+1..stop`` only (the same modules, nothing copied) and
    returns the raw hidden states after block ``stop`` (the final norm only when ``stop`` is its top
    block). Below ``start > 0`` it must be fed ``inputs_embeds``: the hidden states after block ``start``.

    Whether a family's forward pass allows this (it adds nothing but the blocks to ``inputs_embeds``)
    is for the caller to check: GPT-2 adds its position embeddings there, Gemma scales the input."""
    base = backbone.model
    blocks = decoder_blocks(base)
    if not 0 <= start < stop <= len(blocks):
        raise ValueError(f"blocks {start + 1}..{stop} are not within the model's {len(blocks)}")
    stack = next(name for name, child in base.named_children() if child is blocks)
    norm = None
    if stop < len(blocks) and not any(isinstance(child, nn.Identity) for child in base.children()):
        norm = final_norm_name(base)  # (a backbone cut by --layer already has an identity there)
    final = getattr(base, norm) if norm is not None else None
    setattr(base, stack, nn.ModuleList(list(blocks)[start:stop]))
    if norm is not None:
        setattr(base, norm, nn.Identity())
    try:
        yield
    finally:
        setattr(base, stack, blocks)
        if norm is not None:
            setattr(base, norm, final)


def final_norm_name(base: nn.Module) -> str:
    """Attribute name of the norm after the last block (``norm``, ``ln_f``, ``final_layer_norm``...):
    the one child with weights that is neither an embedding nor the block stack."""
    blocks = decoder_blocks(base)
    names = [name for name, child in base.named_children()
             if child is not blocks and not isinstance(child, nn.Embedding) and any(True for _ in child.parameters())]
    if len(names) != 1:
        raise ModelLoadError(f"cannot tell the final norm of {type(base).__name__} (candidates: {names})")
    return names[0]


def truncated_config(config: PretrainedConfig, layer: int) -> PretrainedConfig:
    """A copy of ``config`` with ``layer`` blocks (per-layer lists such as ``layer_types`` cut to match)."""
    config = copy.deepcopy(config)
    total = num_blocks(config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, layer)
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == total and key.startswith("layer"):
            setattr(config, key, value[:layer])
    return config


def num_blocks(config: PretrainedConfig) -> int:
    for key in LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ModelLoadError(f"cannot tell the number of layers of a {config.model_type!r} model from its config")


def block_at(backbone: HFBackbone, share: Fraction) -> int:
    """``--layer P/Q``: the block at that share of the model's depth, rounded up (``middle``, 1/2: 15 of 30;
    2/3: 20 of 30), and at least the first."""
    return max(1, math.ceil(len(decoder_blocks(backbone.model)) * share))


def truncate_backbone(backbone: HFBackbone, layer: int, keep_norm: bool = False) -> HFBackbone:
    """Keep blocks 1..``layer`` and drop the final norm, so the backbone returns the raw hidden states
    after block ``layer``. Middle layers of a pretrained decoder often classify better than the last
    (which is shaped for next-token prediction), and the dropped blocks cost nothing to run.

    ``keep_norm``: keep the final norm after block ``layer``; the backbone is then exactly the model
    family with ``layer`` blocks, which transformers can run (``export --format hf``)."""
    base = backbone.model
    blocks = decoder_blocks(base)
    if not 1 <= layer <= len(blocks):
        raise ConfigError(f"layer must be between 1 and {len(blocks)} for this model (got {layer})")
    norm = final_norm_name(base)
    del blocks[layer:]
    base.config = truncated_config(base.config, layer) if num_blocks(base.config) != layer else base.config
    if not keep_norm:
        setattr(base, norm, nn.Identity())
    return backbone


def _sdpa_unsupported(exc: Exception) -> bool:
    """Whether ``exc`` is transformers refusing SDPA for this architecture (e.g. Gemma 2's softcapping)."""
    text = str(exc)
    return isinstance(exc, ValueError) and ("scaled_dot_product_attention" in text or "sdpa" in text)


def _plain_config(config: PretrainedConfig) -> PretrainedConfig:
    """A copy without ``quantization_config`` (set by GGUF loading; it would make the model unsaveable)."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    return config


def backbone_from_config(config: PretrainedConfig) -> HFBackbone:
    """A randomly initialised float32 base model for ``config`` (a CausalLM config works too).

    Used by tests and to rebuild a saved full fine-tune, whose weights then come from lastpool's own
    safetensors file. SDPA attention where the architecture supports it, eager otherwise.
    """
    config = _plain_config(config)
    try:
        model = AutoModel.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    except ValueError as exc:
        if not _sdpa_unsupported(exc):
            raise
        model = AutoModel.from_config(config, attn_implementation="eager", dtype=torch.float32)
    return HFBackbone(model.float())


def _from_pretrained(name: str, **kwargs: Any) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` in float32 from safetensors only; strict about missing weights.

    transformers only warns when checkpoint weights are missing (they stay randomly initialised); a
    classifier built on a half-random backbone would train on noise, so that is an error here. Unexpected
    keys (e.g. ``lm_head.weight`` of a CausalLM checkpoint) are fine: the base model has no LM head.
    """
    common: dict[str, Any] = {"dtype": torch.float32, "output_loading_info": True, **kwargs}
    if "gguf_file" not in kwargs:
        common["use_safetensors"] = True
    if kwargs.get("local_files_only"):
        # With peft installed, transformers first looks for an adapter_config.json on the Hub and does
        # not pass local_files_only on, so an offline hub id would retry the network first.
        common["adapter_kwargs"] = {"local_files_only": True}
    try:
        model, info = AutoModel.from_pretrained(name, attn_implementation="sdpa", **common)
    except ValueError as exc:
        if not _sdpa_unsupported(exc):
            raise
        model, info = AutoModel.from_pretrained(name, attn_implementation="eager", **common)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(item[0]) if isinstance(item, tuple) else str(item)
                        for item in info.get("mismatched_keys") or [])
    if missing or mismatched:
        shown = ", ".join((missing + mismatched)[:5])
        more = len(missing) + len(mismatched) - 5
        raise ModelLoadError(
            f"{name}: checkpoint does not match the {type(model).__name__} architecture "
            f"({len(missing)} missing, {len(mismatched)} mismatched weights: {shown}{', ...' if more > 0 else ''})"
        )
    model.eval()
    return model  # already float32 (``dtype``); ``.float()`` is refused on GGUF-loaded models




def load_backbone(
    source: str, trust_remote_code: bool = False, cache_dir: Path | None = None
) -> tuple[HFBackbone, dict[str, Any]]:
    """Load a pretrained base decoder in float32 from a hub id, a local folder or a ``.gguf`` file.

    Returns the backbone and a description ``{"kind", "source", "sha256", "model_type", ...}`` to record
    with a run (``sha256`` is set for files only). Any failure becomes one ModelLoadError.
    """
    path = Path(source).expanduser()
    try:
        if path.suffix.lower() == ".gguf":
            return _load_gguf(path, cache_dir)
        if path.is_dir():
            return _load_folder(path, trust_remote_code)
        if looks_local(source, path):
            raise ModelLoadError(f"model {source}: not a folder, a .gguf file or a hub id")
        model = _from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=offline())
        info = {"kind": "hub", "source": source, "sha256": None, "model_type": model.config.model_type}
        return HFBackbone(model).eval(), info
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; the user needs one message
        raise load_failure("model", source, exc) from None


def _load_folder(folder: Path, trust_remote_code: bool) -> tuple[HFBackbone, dict[str, Any]]:
    """A saved transformers model folder; refused unless its weights are safetensors."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a model folder (no config.json)")
    files = [p for p in folder.iterdir() if p.is_file()]
    if not any(p.suffix == ".safetensors" for p in files):
        pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{folder}: holds only pickled weights ({', '.join(pickles)}); lastpool loads weights only "
                "from safetensors (pickles can run code when loaded): convert the model to safetensors first"
            )
        raise ModelLoadError(f"{folder}: no safetensors weights found")
    model = _from_pretrained(str(folder), trust_remote_code=trust_remote_code, local_files_only=True)
    info = {"kind": "folder", "source": str(folder), "sha256": None, "model_type": model.config.model_type}
    return HFBackbone(model).eval(), info


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def _load_gguf(path: Path, cache_dir: Path | None) -> tuple[HFBackbone, dict[str, Any]]:
    """Dequantize a GGUF file once, then reuse the float32 safetensors cached under its sha256."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if not _is_gguf(path):
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    digest = sha256_file(path)
    root = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "gguf"
    cached = root / digest
    model: PreTrainedModel | None = None
    hit = False
    if (cached / "config.json").is_file():
        try:
            model = _from_pretrained(str(cached), local_files_only=True)
            hit = True
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt from the GGUF file
            model = None
    if model is None:
        loaded = _from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        model = _write_cache(loaded, cached)
    info = {
        "kind": "gguf",
        "source": str(path),
        "sha256": digest,
        "model_type": model.config.model_type,
        "cache": str(cached),
        "cache_hit": hit,
    }
    return HFBackbone(model).eval(), info


def _write_cache(loaded: PreTrainedModel, cached: Path) -> PreTrainedModel:
    """Save ``loaded``'s float weights into ``cached`` atomically; return a plain (saveable) copy.

    transformers refuses save_pretrained on a GGUF-loaded model, so the weights move into a fresh model
    built from the config minus ``quantization_config`` (strict load_state_dict: nothing missing). The
    folder is written under a temporary name and renamed, so a crash never leaves a half-written entry.
    """
    config = _plain_config(loaded.config)
    fresh = AutoModel.from_config(config, attn_implementation=loaded.config._attn_implementation,
                                  dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.eval()
    del loaded
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    try:
        fresh.save_pretrained(str(tmp))
        if cached.exists():  # a damaged entry (or a concurrent writer finished first): replace it
            shutil.rmtree(cached, ignore_errors=True)
        try:
            os.replace(tmp, cached)
        except OSError:
            if not (cached / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return fresh

