"""The engine's worker thread and the token streams it feeds to `mgr serve`'s event loop.

An Engine is not thread-safe, so exactly one thread owns it and takes jobs from a FIFO queue,
one whole generation at a time. Each generation starts from a fresh cache inside the engine, so
no request can see another's state; a long stream delays later requests, never corrupts them.
Tokens travel back through a per-job asyncio queue (`call_soon_threadsafe`). A streamed
request whose client disconnects cancels its job between two tokens (a job cancelled while
still queued is skipped); a non-streamed one runs to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any, AsyncIterator

from core.errors import MgrError
from mgr.infer.http_schema import RequestError

DEFAULT_MAX_QUEUE = 64
log = logging.getLogger("mgr.serve")


class _Job:
    """One generation: its inputs, a cancel flag, and the queue its events arrive on."""

    def __init__(self, ids: list[int], params, whole: bool, loop: asyncio.AbstractEventLoop):
        self.ids, self.params, self.whole, self.loop = ids, params, whole, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def deliver(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is stopping
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class EngineWorker:
    """The single thread that runs the engine; `await`-able token streams for the event loop."""

    _STOP = object()

    def __init__(self, engine, max_queue: int = DEFAULT_MAX_QUEUE):
        self.engine = engine
        self.max_queue = max_queue
        self.pending = 0  # submitted and not yet finished; touched only on the event loop
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mgr-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._jobs.put(self._STOP)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not self._STOP:
            if job.cancelled.is_set():
                job.deliver("done")
                continue
            try:
                if job.whole:
                    job.deliver("tokens", [int(t) for t in self.engine.generate(job.ids, job.params)])
                else:
                    tokens = self.engine.stream(job.ids, job.params)
                    try:
                        for t in tokens:
                            job.deliver("tokens", [int(t)])
                            if job.cancelled.is_set():
                                break
                    finally:
                        close = getattr(tokens, "close", None)
                        if close is not None:
                            close()
                job.deliver("done")
            except MgrError as e:
                job.deliver("error", RequestError(400, str(e)))
            except Exception as e:  # a bug must not kill the worker: report it to this request only
                log.exception("generation failed")
                job.deliver("error", RequestError(500, f"generation failed: {type(e).__name__}: {e}",
                                                  code="server_error"))

    def check_capacity(self) -> None:
        if self.pending >= self.max_queue:
            raise RequestError(429, f"server busy: {self.pending} requests queued (limit {self.max_queue})",
                               code="rate_limit_exceeded")

    async def tokens(self, ids: list[int], params, *, whole: bool) -> AsyncIterator[list[int]]:
        """Token lists as the worker produces them (one list for `whole`, else one per token)."""
        self.check_capacity()
        job = _Job(ids, params, whole, asyncio.get_running_loop())
        self.pending += 1
        self._jobs.put(job)
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "tokens":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise value
        finally:
            # Also reached on cancellation (client gone): the worker stops at the next token.
            job.cancelled.set()
            self.pending -= 1


class TextStream:
    """Incremental detokenisation whose pieces concatenate to `decode(all ids)`.

    Byte-fallback pieces can split one character over several tokens; a prefix then decodes to
    U+FFFD, which is held back until the character completes (or the stream ends).
    """

    def __init__(self, decode):
        self.decode, self.ids, self.sent = decode, [], ""

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.decode(self.ids).rstrip("\ufffd")
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self) -> str:
        text = self.decode(self.ids)
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text
        return delta
