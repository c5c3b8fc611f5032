"""HTTP serving of a trained classifier: ``lastpool serve MODEL`` or ``serve(path)`` / ``create_app(clf)``.

Imports FastAPI and uvicorn, so the rest of lastpool does not import this package unless asked to serve.
"""

from __future__ import annotations

from lastpool.serving.app import create_app, serve
from lastpool.serving.batcher import BatcherStats, MicroBatcher

__all__ = ["BatcherStats", "MicroBatcher", "create_app", "serve"]
