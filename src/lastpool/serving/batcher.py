"""Micro-batching: concurrent requests share one model call.

A forward pass over 16 short texts costs little more than over one, so under concurrent load the
server gathers the texts of the requests that arrive within a few milliseconds (or until a token or
text budget is full) and runs the model once for all of them. Each text is tokenized once, on arrival:
the ids count against the token budget and are what the model runs on. Every model call, and every use
of the tokenizer (a fast tokenizer is not safe to use from two threads at once), runs in one worker
thread, so the event loop keeps accepting requests while the model computes and the model never runs
twice at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
logger = logging.getLogger("lastpool.serving")


class BatcherClosedError(RuntimeError):
    """A request arrived after the batcher was told to stop (the server is shutting down)."""


class ModelCallError(RuntimeError):
    """The model call of a batch failed; only the requests of that batch get this error."""


@dataclass
class BatcherStats:
    """Counters for monitoring and tests: ``model_calls < requests`` means requests were batched."""

    requests: int = 0
    texts: int = 0
    model_calls: int = 0
    failed_calls: int = 0
    largest_batch_texts: int = 0
    largest_batch_requests: int = 0


# One input of a request: a text, or (for a model of pairs) a (text, second text) pair; only encode and
# predict look inside.
Item = Any
Encode = Callable[[list[Item]], tuple[list[list[int]], list[int]]]  # items -> (ids, lengths before truncation)
Predict = Callable[[list[Item], list[list[int]]], np.ndarray]  # (items, their ids) -> [N, C]


@dataclass
class _Pending:
    texts: list[Item]
    ids: list[list[int]]
    tokens: int
    enqueued: float
    future: asyncio.Future[np.ndarray] = field(repr=False)


class MicroBatcher:
    """Queue requests, run them in as few ``predict`` calls as the limits allow, answer each with its rows.

    ``encode(texts) -> (token ids, tokens per text before truncation)`` and ``predict(texts, ids) -> [N, C]``
    run in the worker thread. A batch closes when ``batch_wait_ms`` have passed since its first request
    arrived, or when adding the next request would exceed ``max_batch_tokens`` (the ids' tokens, that
    is after truncation) or ``max_batch_texts``. A request is never split, so
    one request over a budget forms a batch of its own. With ``enabled=False`` every request runs its
    own ``predict`` call (still in the worker thread, one at a time).
    """

    def __init__(
        self,
        predict: Predict,
        encode: Encode,
        *,
        batch_wait_ms: float = 5.0,
        max_batch_tokens: int = 4096,
        max_batch_texts: int = 256,
        enabled: bool = True,
    ) -> None:
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0 (got {batch_wait_ms})")
        if max_batch_tokens < 1 or max_batch_texts < 1:
            raise ValueError("max_batch_tokens and max_batch_texts must be positive")
        self._predict = predict
        self._encode = encode
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.enabled = enabled
        self.stats = BatcherStats()
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker thread (and, with micro-batching, the collecting task) on the running loop.

        The app's lifespan calls this; without a lifespan (an ASGI test client) the first request does.
        """
        if self._executor is not None:
            return
        self._closing = False
        self._started = True
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastpool-model")
        if self.enabled:
            self._wakeup = asyncio.Event()
            self._worker = asyncio.create_task(self._collect(), name="lastpool-batcher")

    async def stop(self) -> None:
        """Refuse new requests, answer every queued one (without waiting for more), then stop the thread."""
        self._closing = True
        if self._executor is None:
            return
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        executor, self._executor = self._executor, None
        await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)

    # ------------------------------------------------------------------ requests
    async def run_in_worker(self, func: Callable[[], T]) -> T:
        """Run ``func`` in the model thread (where the tokenizer and the model may be used)."""
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        if not self._started:
            await self.start()
        if self._executor is None:
            raise BatcherClosedError("the server is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def submit(self, texts: Sequence[Item]) -> tuple[np.ndarray, list[int]]:
        """Probabilities [len(texts), C] for one request, and each text's token count before truncation.

        Raises ``ModelCallError`` when the model call that held these texts failed, and
        ``BatcherClosedError`` once ``stop`` has been called.
        """
        items = list(texts)
        if not self.enabled:
            probabilities, lengths = await self.run_in_worker(lambda: self._predict_alone(items))
            return probabilities, lengths
        ids, lengths = await self.run_in_worker(lambda: self._encode(items))
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        tokens = sum(max(1, len(row)) for row in ids)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Pending(items, ids, tokens, loop.time(), future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future, lengths

    def _predict_alone(self, texts: list[Item]) -> tuple[np.ndarray, list[int]]:
        """Micro-batching off: encode and predict one request in one trip to the worker thread."""
        ids, lengths = self._encode(texts)
        self.stats.requests += 1
        self.stats.texts += len(texts)
        self.stats.model_calls += 1
        self._note_batch(len(texts), 1)
        try:
            return self._predict(texts, ids), lengths
        except Exception as exc:
            self.stats.failed_calls += 1
            logger.error("model call failed for one request of %d texts", len(texts), exc_info=exc)
            raise ModelCallError(f"{type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ worker
    def _full(self) -> bool:
        texts = tokens = 0
        for item in self._pending:
            texts += len(item.texts)
            tokens += item.tokens
            if texts >= self.max_batch_texts or tokens >= self.max_batch_tokens:
                return True
        return False

    def _take_batch(self) -> list[_Pending]:
        """The oldest queued requests that fit the budgets together (at least one)."""
        batch = [self._pending.popleft()]
        texts, tokens = len(batch[0].texts), batch[0].tokens
        while self._pending:
            nxt = self._pending[0]
            if texts + len(nxt.texts) > self.max_batch_texts or tokens + nxt.tokens > self.max_batch_tokens:
                break
            batch.append(self._pending.popleft())
            texts += len(nxt.texts)
            tokens += nxt.tokens
        return batch

    async def _collect(self) -> None:
        """Wait for a first request, give others ``batch_wait`` to join, run the batch; until stopped and empty."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # The window counts from the first request's arrival: requests that queued up while the
            # previous batch ran do not wait again.
            deadline = self._pending[0].enqueued + self.batch_wait
            while not self._closing and not self._full():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            await self._run_batch(self._take_batch())

    async def _run_batch(self, batch: list[_Pending]) -> None:
        texts = [text for item in batch for text in item.texts]
        ids = [row for item in batch for row in item.ids]
        self.stats.requests += len(batch)
        self.stats.texts += len(texts)
        self.stats.model_calls += 1
        self._note_batch(len(texts), len(batch))
        assert self._executor is not None
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, texts, ids)
        except Exception as exc:
            self.stats.failed_calls += 1
            logger.error("model call failed for a batch of %d requests (%d texts)", len(batch), len(texts),
                         exc_info=exc)
            error = ModelCallError(f"{type(exc).__name__}: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        start = 0
        for item in batch:
            stop = start + len(item.texts)
            if not item.future.done():  # the client may have gone away
                item.future.set_result(probabilities[start:stop])
            start = stop

    def _note_batch(self, texts: int, requests: int) -> None:
        self.stats.largest_batch_texts = max(self.stats.largest_batch_texts, texts)
        self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, requests)
