"""lastpool: decoder-only language models as text classifiers, by correct last-token pooling.

Heavy names (``Classifier`` pulls in torch and transformers) are imported on first use, so the
``lastpool`` command starts quickly for ``--help`` and for errors in its flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lastpool.errors import ConfigError, DataError, LastpoolError, ModelLoadError
from lastpool.version import __version__

if TYPE_CHECKING:
    from lastpool.classifier import Classifier
    from lastpool.config import RunConfig

__all__ = ["Classifier", "ConfigError", "DataError", "LastpoolError", "ModelLoadError", "RunConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Classifier":
        from lastpool.classifier import Classifier

        return Classifier
    if name == "RunConfig":
        from lastpool.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'lastpool' has no attribute {name!r}")
