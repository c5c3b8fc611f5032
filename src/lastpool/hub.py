"""Where a model or tokenizer comes from (file, folder or hub id), and one clear error when it fails.

Shared by the tokenizer and backbone loaders so both treat offline mode and bad sources the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from lastpool.errors import ModelLoadError


def offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now (1, true, yes, on).

    huggingface_hub reads these once, at import; reading them at call time means that setting one later
    still fails fast (``local_files_only``) instead of retrying connections for ~45 s.
    """
    return any(os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_local(source: str, path: Path) -> bool:
    """A path-like source that is neither a folder nor a .gguf file cannot be a hub id either."""
    return path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def load_failure(what: str, source: str, exc: Exception) -> ModelLoadError:
    """One line for any library error while loading ``source`` (a model or a tokenizer)."""
    unreachable = offline() or "connect" in str(exc).lower()
    hint = " (the Hugging Face Hub is unreachable: pass a local folder or .gguf file)" if unreachable else ""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ModelLoadError(f"could not load {what} {source!r}: {reason}{hint}")
