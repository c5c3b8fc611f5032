"""lastpool: decoder-only language models as text classifiers, by correct last-token pooling."""

from lastpool.classifier import Classifier
from lastpool.config import RunConfig
from lastpool.errors import ConfigError, DataError, LastpoolError, ModelLoadError
from lastpool.version import __version__

__all__ = ["Classifier", "ConfigError", "DataError", "LastpoolError", "ModelLoadError", "RunConfig", "__version__"]
