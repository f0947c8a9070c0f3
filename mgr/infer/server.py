"""`mgr serve`: an OpenAI-compatible subset over HTTP (Starlette on uvicorn).

Routes: `POST /v1/completions` (JSON, or server-sent events with `"stream": true`),
`GET /v1/models`, `GET /health`. Request fields and the refusal policy are in `http_schema`.

Concurrency: one worker thread owns the engine and runs queued generations one at a time
(`server_queue`); the event loop only parses, validates and writes responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
import uuid
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.errors import MgrError
from mgr.infer.http_schema import CompletionRequest, RequestError, parse_completion, parse_json
from mgr.infer.server_queue import DEFAULT_MAX_QUEUE, EngineWorker, TextStream

DEFAULT_MAX_BODY_BYTES = 1 << 20


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds chunked bodies, which declare no length
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(engine, req: CompletionRequest):
    """Token ids and SamplingParams of a request, or RequestError naming the problem."""
    from mgr.infer.engine import SamplingParams

    if req.model is not None and req.model != engine.name:
        raise RequestError(404, f"model '{req.model}' is not served here; this server has '{engine.name}'",
                           "model", code="model_not_found")
    if req.max_tokens >= engine.max_seq_len:
        raise RequestError(400, f"'max_tokens' {req.max_tokens} leaves no room for a prompt in the context of "
                                f"{engine.max_seq_len} tokens (the model's max_seq_len)", "max_tokens")
    params = SamplingParams(max_new_tokens=req.max_tokens, temperature=req.temperature,
                            top_k=req.top_k, top_p=req.top_p, seed=req.resolved_seed())
    try:
        params.validate(engine)
    except MgrError as e:
        raise RequestError(400, str(e)) from None
    try:
        # On the event loop, beside the worker: tokenizing only reads the SentencePiece model.
        ids = engine.encode(req.prompt)
    except MgrError as e:  # e.g. an engine without a tokenizer
        raise RequestError(400, str(e), "prompt") from None
    if not ids:
        raise RequestError(400, "'prompt' must contain at least one token", "prompt")
    try:
        ids = engine.check_prompt(ids, req.max_tokens)
    except MgrError as e:
        raise RequestError(400, str(e), "max_tokens") from None
    return ids, params


def make_app(engine, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             max_queue: int = DEFAULT_MAX_QUEUE) -> Starlette:
    """The Starlette application serving `engine` (its worker thread runs for the app's lifespan)."""
    worker = EngineWorker(engine, max_queue)
    started = int(time.time())

    async def completions(request: Request) -> Response:
        try:
            req = parse_completion(parse_json(await _read_body(request, max_body_bytes)))
            ids, params = _prepare(engine, req)
        except RequestError as e:
            return _error(e)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": engine.name}

        def finish_reason(n: int) -> str:
            return "length" if n >= params.max_new_tokens else "stop"

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}

        if not req.stream:
            out: list[int] = []
            try:
                async for toks in worker.tokens(ids, params, whole=True):
                    out.extend(toks)
            except RequestError as e:
                return _error(e)
            choice = {"text": engine.decode(out), "index": 0, "logprobs": None,
                      "finish_reason": finish_reason(len(out))}
            return JSONResponse({**head, "choices": [choice], "usage": usage(len(out))})

        async def events() -> AsyncIterator[str]:
            text = TextStream(engine.decode)

            def chunk(piece: str, reason: str | None, n: int | None = None) -> str:
                body = {**head, "choices": [{"text": piece, "index": 0, "logprobs": None,
                                             "finish_reason": reason}]}
                if n is not None:
                    body["usage"] = usage(n)
                return f"data: {json.dumps(body)}\n\n"

            try:
                async for toks in worker.tokens(ids, params, whole=False):
                    piece = text.push(toks)
                    if piece:
                        yield chunk(piece, None)
                yield chunk(text.finish(), finish_reason(len(text.ids)), len(text.ids))
            except RequestError as e:  # headers are sent already: report in-band
                yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"

        try:  # a queue-full refusal must still be a 429, so check before the headers go out
            worker.check_capacity()
        except RequestError as e:
            return _error(e)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": engine.name, "object": "model", "created": started, "owned_by": "mgr",
            "max_seq_len": engine.max_seq_len, "vocab_size": engine.vocab_size}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.name, "pending": worker.pending})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(RequestError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                                   code="not_found" if exc.status_code == 404 else "invalid_request_error"))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(RequestError(500, f"internal error: {type(exc).__name__}", code="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"])],
                    exception_handlers={HTTPException: http_error, Exception: server_error},
                    lifespan=lifespan)
    app.state.worker = worker
    return app


def warm_up(engine) -> float:
    """Compile the engine's programs before the first request; returns the seconds it took.

    The prompt is longer than a prefill chunk, so both the chunked prefill and the decode step
    are built (and reused by every request: their shapes do not depend on the prompt).
    """
    from mgr.infer.engine import SamplingParams

    n = max(1, min(engine.max_seq_len - 2, 48))
    t0 = time.perf_counter()
    engine.generate([4 + i % max(1, engine.vocab_size - 4) for i in range(n)],
                    SamplingParams(max_new_tokens=2, temperature=0.0))
    return time.perf_counter() - t0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or MgrError: a busy port fails here, in one line."""
    if not 0 <= port <= 65535:
        raise MgrError(f"--port must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise MgrError(f"cannot listen on {host}:{port}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now (not when uvicorn starts) queues early clients instead of refusing them.
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise MgrError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(engine, host: str = "127.0.0.1", port: int = 8000, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          max_queue: int = DEFAULT_MAX_QUEUE, warmup: bool = True, log_level: str = "warning",
          announce=print) -> None:
    """Serve `engine` until SIGINT or SIGTERM, then drain open requests (up to 10 s) and return.

    `announce` gets one line once the port is bound and the programs are compiled.
    """
    import signal

    import uvicorn

    if max_body_bytes < 1:
        raise MgrError(f"--max-body-bytes must be positive, got {max_body_bytes}")
    sock = bind(host, port)
    compile_s = warm_up(engine) if warmup else 0.0
    config = uvicorn.Config(make_app(engine, max_body_bytes=max_body_bytes, max_queue=max_queue),
                            log_level=log_level, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    exposed = "" if ipaddress.ip_address(bound[0]).is_loopback else \
        "; NOT loopback: reachable from other machines, without authentication"
    announce(f"serving '{engine.name}' on http://{bound[0]}:{bound[1]} "
             f"(compiled in {compile_s:.1f} s; SIGINT or SIGTERM stops{exposed})")
    # uvicorn re-raises the stop signal once it has shut down; with these handlers in place that
    # is a no-op, so a requested stop ends the process normally (exit 0) instead of by the signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
