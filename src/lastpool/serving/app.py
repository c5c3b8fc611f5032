"""The HTTP API: ``create_app`` builds the FastAPI app around a loaded ``Classifier``; ``serve`` runs it.

Endpoints: ``POST /v1/classify``, ``GET /v1/model``, ``GET /health``, FastAPI's docs at ``/docs`` and, for
a model of single texts, ``POST /classify`` in the request and response shape of vLLM and SGLang.
Every error is a JSON body ``{"error": {"code", "type", "message"}}``. Requests are micro-batched
(see ``batcher.py``). The API key and the body-size limit are checked in an ASGI middleware before any
byte of the body is parsed, so an unauthenticated or oversized request costs no JSON parsing.
"""

from __future__ import annotations

import hashlib
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lastpool.artifact import PretrainedBackboneSpec
from lastpool.config import ServeConfig, serve_config
from lastpool.errors import ConfigError
from lastpool.serving.batcher import BatcherClosedError, MicroBatcher, ModelCallError
from lastpool.serving.schemas import (
    ClassifyResponse,
    ClassifyResult,
    EngineClassifyResponse,
    EngineResult,
    EngineUsage,
    LabelProbability,
    ModelRef,
    classify_request,
    engine_request,
)
from lastpool.tasks import Task
from lastpool.version import __version__

if TYPE_CHECKING:
    from lastpool.classifier import Classifier


API_PREFIX = "/v1"
ENGINE_PATH = "/classify"  # vLLM's and SGLang's classification endpoint
ERROR_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 422: "validation_error", 500: "internal_error", 503: "unavailable"}


# ------------------------------------------------------------------------------------------ errors
class ErrorBody(BaseModel):
    code: int
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": ERROR_TYPES[code]} for code in (400, 401, 413, 422, 500, 503)
}


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with this status."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "type": type_, "message": message}}, status_code=status,
                        headers=headers)


# ------------------------------------------------------------------------------------------ guard
class RequestGuard:
    """ASGI middleware: API key on ``/v1/*`` and ``/classify``, then the body-size limit, before the app sees
    the request.

    The limit is checked on ``Content-Length`` and again on the bytes actually received, so a chunked
    body (no ``Content-Length``) or a lying header cannot get past it. The body is read here (at most
    ``max_body_bytes``) and replayed to the app. A POST without ``Content-Type`` is treated as JSON.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_key: str | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode("utf-8") if api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        path = scope["path"]
        protected = self.api_key is not None and (path in (API_PREFIX, ENGINE_PATH)
                                                  or path.startswith(API_PREFIX + "/"))
        if protected and not self._authorized(headers.get(b"authorization", b"")):
            response = error_response(401, "unauthorized", "missing or wrong API key: send 'Authorization: "
                                      "Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        too_large = error_response(413, "payload_too_large",
                                   f"request body is larger than the limit of {self.max_body_bytes} bytes")
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
                return
            if length > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await too_large(scope, receive, send)  # uvicorn discards the rest of the body
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if scope["method"] == "POST" and b"content-type" not in headers:
            scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        assert self.api_key is not None
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.api_key)


# ------------------------------------------------------------------------------------------ app
def model_info(clf: Classifier) -> dict[str, Any]:
    """What a client needs to know about the served model (``GET /v1/model``)."""
    spec = clf.spec
    assert spec is not None
    backbone: dict[str, Any] = {"type": spec.backbone.type}
    if isinstance(spec.backbone, PretrainedBackboneSpec):
        backbone.update(source=spec.backbone.source, model_type=spec.backbone.model_type, layer=spec.backbone.layer)
    else:
        cfg = spec.backbone.config
        backbone.update(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)
    return {"task": spec.task, "labels": list(spec.labels), "thresholds": spec.thresholds, "backbone": backbone,
            "pairs": "{text_pair}" in spec.prompt, "mode": spec.mode, "pooling": spec.pooling,
            "max_length": spec.max_length, "padding_side": spec.padding_side, "prompt": spec.prompt,
            "temperature": spec.temperature, "precision": spec.precision,
            "bag_of_words_share": spec.fusion.share if spec.fusion is not None else None,
            "model_library_version": spec.library_version, "lastpool_version": __version__}


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    """(error type, one readable line) from pydantic's error list."""
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "JSON decode error")
            loc = error.get("loc", ())
            where = f" at position {loc[1]}" if len(loc) > 1 else ""
            return "invalid_json", f"malformed JSON body{where}: {detail}"
    parts = []
    for error in errors[:5]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        if not loc and isinstance(error.get("input"), bytes):  # a body FastAPI did not parse as JSON
            parts.append("the body must be a JSON object (send Content-Type: application/json)")
            continue
        parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "validation_error", "; ".join(parts) + more


def _lifespan(batcher: MicroBatcher) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the micro-batcher with the app, stop it after the last request."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn runs the shutdown half only after in-flight requests are answered (or the graceful
        # timeout passed); stop() then answers anything still queued before the worker thread ends.
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    return lifespan


def _answer_errors_as_json(app: FastAPI) -> None:
    """Every error, ours, the request validator's, Starlette's or unexpected, as one JSON error body."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        type_, message = _validation_message(exc)
        return error_response(422, type_, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, ERROR_TYPES.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this response is sent, so uvicorn logs the traceback.
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


def create_app(clf: Classifier, config: ServeConfig | None = None, *, model_name: str | None = None,
               **settings: Any) -> FastAPI:
    """The FastAPI app serving ``clf``; ``app.state.batcher`` is its ``MicroBatcher`` (with ``stats``).

    ``config`` (or ``ServeConfig``'s fields as keywords, which override it): ``max_batch`` bounds the
    texts of one request (422 beyond: the schema's maxItems), ``max_batch_texts`` and ``max_batch_tokens`` those of one
    micro-batch (several requests); ``api_key`` protects ``/v1/*``. Host, port and the log level are
    ``serve``'s.
    """
    spec, encoder = clf.spec, clf.encoder
    if spec is None or encoder is None:
        raise ConfigError("create_app needs a fitted or loaded Classifier")
    cfg = serve_config(settings, base=config)
    max_batch, max_body_bytes, api_key = cfg.max_batch, cfg.max_body_bytes, cfg.api_key

    labels = list(spec.labels)
    max_length = spec.max_length
    info = model_info(clf)
    task = spec.task_object()
    pairs = encoder.pairs
    backbone = spec.backbone.source if isinstance(spec.backbone, PretrainedBackboneSpec) else "scratch"
    ref = ModelRef(id=hashlib.sha256(spec.model_dump_json().encode("utf-8")).hexdigest()[:12], name=model_name,
                   backbone=backbone)

    def split(items: list[Any]) -> tuple[list[str], list[str] | None]:
        """A request's items: texts, or (text, second text) pairs for a model of pairs."""
        if not pairs:
            return items, None
        return [a for a, _ in items], [b for _, b in items]

    def encode(items: list[Any]) -> tuple[list[list[int]], list[int]]:
        return encoder.encode_counted(*split(items))

    def predict(items: list[Any], ids: list[list[int]]) -> np.ndarray:
        texts, seconds = split(items)
        return clf.logits(texts, token_ids=ids, text_pairs=seconds)

    batcher = MicroBatcher(predict, encode, batch_wait_ms=cfg.batch_wait_ms, max_batch_tokens=cfg.max_batch_tokens,
                           max_batch_texts=cfg.max_batch_texts, enabled=cfg.micro_batching)
    does = {"single": f"Text classification (one label per text) with a lastpool model. Labels: {', '.join(labels)}.",
            "multilabel": f"Multi-label text classification (any labels per text) with a lastpool model. Labels: "
                          f"{', '.join(labels)}.",
            "regression": f"Text regression (a number per text: {labels[0]}) with a lastpool model."}[spec.task]
    if pairs:
        does += " It reads text pairs: give text_pairs beside texts."
    app = FastAPI(title="lastpool", version=__version__, lifespan=_lifespan(batcher), description=does)
    app.state.batcher = batcher
    app.state.classifier = clf
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes, api_key=api_key)

    _answer_errors_as_json(app)
    # The bearer scheme is declared so /docs shows it; RequestGuard enforces it before the body is read.
    security = [Security(HTTPBearer(auto_error=False))] if api_key is not None else []
    v1 = APIRouter(prefix=API_PREFIX, dependencies=security, responses=ERROR_RESPONSES)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok"}

    @v1.get("/model")
    async def get_model() -> dict[str, Any]:
        """The served model: labels, backbone, pooling, max_length, prompt, temperature, versions, limits."""
        return {**info, "model": ref.model_dump(),
                "limits": {"max_batch": max_batch, "max_body_bytes": max_body_bytes, "top_k_max": len(labels)}}

    async def scored(items: list[Any]) -> tuple[np.ndarray, list[int]]:
        try:
            return await batcher.submit(items)
        except ModelCallError as exc:
            raise APIError(500, "model_error", f"the model failed on this batch: {exc}") from None
        except BatcherClosedError as exc:
            raise APIError(503, "unavailable", str(exc)) from None

    def checked(texts: list[str]) -> list[str]:
        """The batch limit (blank texts never get here: the schema's pattern refuses them)."""
        if len(texts) > max_batch:
            raise APIError(422, "too_many_texts", f"{len(texts)} texts in one request; the limit is {max_batch}")
        return texts

    async def classify(body: Any) -> ClassifyResponse:
        """Classify up to ``max_batch`` texts; results come back in request order."""
        items = _items(checked(body.texts), getattr(body, "text_pairs", None), pairs)
        top_k = getattr(body, "top_k", None)
        logits, lengths = await scored(items)
        results = _results(task, logits, top_k, [n > max_length for n in lengths])
        return ClassifyResponse(task=task.name, results=results, truncated_count=sum(r.truncated for r in results),
                                model=ref)

    classify.__annotations__["body"] = classify_request(task.name, len(labels), pairs, max_batch)
    v1.post("/classify", response_model=ClassifyResponse, response_model_exclude_none=True)(classify)

    async def engine_classify(body: Any) -> EngineClassifyResponse:
        """vLLM's and SGLang's classification API: ``input`` (a text or a list), answered with ``data``
        (``label``, ``probs``, ``num_classes`` per text) and ``usage``, so a client can switch servers."""
        texts = checked([body.input] if isinstance(body.input, str) else body.input)
        logits, lengths = await scored(texts)
        return EngineClassifyResponse(
            id=f"classify-{uuid.uuid4().hex}", created=int(time.time()), model=model_name or ref.id,
            data=_engine_results(task, logits),
            usage=EngineUsage(prompt_tokens=sum(min(n, max_length) for n in lengths),
                              total_tokens=sum(min(n, max_length) for n in lengths)))

    if not pairs:  # the engines' /classify has no second text (their pairs go to /score)
        engine_classify.__annotations__["body"] = engine_request(max_batch)
        app.post(ENGINE_PATH, response_model=EngineClassifyResponse, dependencies=security,
                 responses=ERROR_RESPONSES)(engine_classify)

    app.include_router(v1)
    return app


def _items(texts: list[str], pairs: list[str] | None, reads_pairs: bool) -> list[Any]:
    """The request's inputs for the batcher: texts, or (text, second text) pairs; a mismatch is a 422."""
    if reads_pairs and pairs is None:
        raise APIError(422, "validation_error", "this model reads text pairs: give text_pairs beside texts")
    if not reads_pairs and pairs is not None:
        raise APIError(422, "validation_error", "this model reads single texts: leave out text_pairs")
    if pairs is None:
        return list(texts)
    if len(pairs) != len(texts):
        raise APIError(422, "validation_error", f"{len(texts)} texts but {len(pairs)} text_pairs")
    return list(zip(texts, pairs, strict=True))


def _engine_results(task: Task, logits: np.ndarray) -> list[EngineResult]:
    """Each row as the engines answer it; lastpool's own reading of a multi-label or regression output
    comes beside it (``labels``, ``value``)."""
    outputs = task.outputs(logits)
    if task.name == "regression":
        return [EngineResult(index=i, label=None, probs=[float(v)], num_classes=1, value=float(v))
                for i, v in enumerate(outputs)]
    rows = []
    for i, (row, output) in enumerate(zip(task.probabilities(logits).tolist(), outputs, strict=True)):
        best = max(range(len(row)), key=lambda k: row[k])
        rows.append(EngineResult(index=i, label=task.names[best], probs=[float(p) for p in row],
                                 num_classes=len(row), labels=output if task.name == "multilabel" else None))
    return rows


def _results(task: Task, logits: np.ndarray, top_k: int | None, truncated: list[bool]) -> list[ClassifyResult]:
    """Each row's answer in the task's terms: a label, a set of labels or a value, with probabilities."""
    outputs = task.outputs(logits)
    if task.name == "regression":
        return [ClassifyResult(value=float(v), truncated=cut) for v, cut in zip(outputs, truncated, strict=True)]
    labels = task.names
    results = []
    for row, output, cut in zip(task.probabilities(logits).tolist(), outputs, truncated, strict=True):
        values = [float(p) for p in row]
        top = None
        if top_k is not None:
            order = sorted(range(len(labels)), key=lambda i: (-values[i], i))[:top_k]
            top = [LabelProbability(label=labels[i], probability=values[i]) for i in order]
        chosen = {"labels": output} if task.name == "multilabel" else {"label": output}
        results.append(ClassifyResult(**chosen, probabilities=dict(zip(labels, values, strict=True)), top_k=top,
                                      truncated=cut))
    return results


# ------------------------------------------------------------------------------------------ serve
def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` before uvicorn starts, so a busy port is a ConfigError (exit 2), not a
    log line and exit 1, and port 0 (any free port) can be announced with the port the OS chose."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that calls ``on_started`` once it accepts connections (after the lifespan startup),
    so the "serving at URL" line is only printed when the URL works."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


def serve(model_path: str | Path, config: ServeConfig | None = None, *,
          announce: Callable[[str], None] | None = None, **settings: Any) -> None:
    """Load the model and serve it with uvicorn until SIGTERM/SIGINT; then stop accepting, answer the
    requests in flight (for at most ``timeout_graceful_shutdown`` seconds) and return normally.

    ``config`` or ``ServeConfig``'s fields as keywords; ``announce(url)`` is called once the server
    accepts connections.
    """
    from lastpool.export import load_predictor

    cfg = serve_config(settings, base=config)
    host, port, log_level = cfg.host, cfg.port, cfg.log_level
    clf = load_predictor(model_path)  # a model folder, or an exported .onnx file (int8 included)
    app = create_app(clf, cfg, model_name=Path(model_path).resolve().name)
    sock = bind_socket(host, port)
    url = url_of(sock)
    uvicorn_config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=cfg.timeout_graceful_shutdown,
                                    lifespan="on", access_log=log_level in ("debug", "trace", "info"))
    server = AnnouncingServer(uvicorn_config, lambda: announce(url) if announce is not None else None)
    # uvicorn re-raises the signal that stopped it, once it has shut down, under the handler that was in
    # place before it started. This handler there makes a graceful stop end in a normal return (exit 0)
    # rather than death by SIGTERM or a KeyboardInterrupt, and a signal that comes before uvicorn has
    # installed its own handlers still stops the server.
    def request_stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
