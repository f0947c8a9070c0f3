"""`mgr serve` as a separate process, over real HTTP: answers, streams, concurrency, refusals, stop.

One server process (a tiny exported model) is shared by the module and stopped with SIGTERM at
its end (the `server` fixture's teardown checks the clean exit); the expected answers come from
the same export loaded in this process, so "the server answers what the engine generates" is
checked token for token. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from core.errors import MgrError
from helpers import TINY_DATA, tiny_model
from mgr.infer.http_schema import RequestError, parse_completion, parse_json
from mgr.infer.server import warm_up
from mgr.infer.server_queue import TextStream

TIMEOUT = 60.0  # any single HTTP exchange (the first one may wait for compilation)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, argv: list[str], port: int, log: Path, env: dict):
        self.port, self.log = port, log
        self.proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.get("/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not come up:\n{log.read_text()}")
            time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = TIMEOUT):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        finally:
            conn.close()

    def get(self, path: str, timeout: float = TIMEOUT):
        status, _, data = self.request("GET", path, timeout=timeout)
        return status, json.loads(data)

    def complete(self, timeout: float = TIMEOUT, **fields):
        status, ctype, data = self.request("POST", "/v1/completions", json.dumps(fields).encode(), timeout)
        return status, ctype, data

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(the `mgr serve` command line without a port, an in-process engine of the same export).

    Random weights, exported in the export format: an untrained model's greedy continuations
    differ from prompt to prompt (a briefly trained tiny one answers spaces to everything),
    so a request that received another's tokens would show.
    """
    import jax

    from mgr.data import corpus
    from mgr.data.tokenizer import train_or_load
    from mgr.infer import load_engine, random_engine
    from mgr.infer.export import write_config, write_files

    shards = corpus.list_shards(corpus.build_embedded_corpus(TINY_DATA))
    tok = train_or_load(shards[:-1], TINY_DATA.vocab_size, TINY_DATA.tokenizer_type)
    random = random_engine(tiny_model(), tok, seed=1)
    out = tmp_path_factory.mktemp("serve") / "tiny-export"
    out.mkdir()
    write_config(out, write_files(out, random.model_config, jax.device_get(random.weights), tok,
                                  quantization=None, source={"random_weights_seed": 1}))
    argv = [sys.executable, "-c", "from mgr.cli import app; app()", "serve", "--model", str(out)]
    engine = load_engine(model_dir=out)
    warm_up(engine)  # compiled here first: the server, sharing this compilation cache, loads them
    return argv, engine


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """One server for the module. Its teardown is the clean-stop check: SIGTERM, exit code 0
    within a bounded time, port closed afterwards (a second server only for that check would
    cost another JAX start-up)."""
    import jax

    argv, _ = model
    # The server's MGR_CACHE_DIR holds a `jax` entry that is this process's JAX cache.
    cache = tmp_path_factory.mktemp("serve-cache")
    (cache / "jax").symlink_to(jax.config.jax_compilation_cache_dir, target_is_directory=True)
    port = free_port()
    srv = Server(argv + ["--port", str(port), "--max-body-bytes", "4096"], port,
                 tmp_path_factory.mktemp("serve-log") / "server.log",
                 {**os.environ, "MGR_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"})
    yield srv
    t0 = time.monotonic()
    assert srv.stop(timeout=30) == 0, srv.log.read_text()
    assert time.monotonic() - t0 < 30
    with pytest.raises(OSError):
        srv.get("/health", timeout=2)


def expected(engine, prompt: str, **sampling) -> str:
    from mgr.infer.engine import SamplingParams

    params = SamplingParams(**sampling)
    ids = engine.check_prompt(engine.encode(prompt), params.max_new_tokens)
    return engine.decode(engine.generate(ids, params))


def sse_events(data: bytes) -> list[str]:
    """The `data:` payloads of a server-sent-events body, in order."""
    events = [block for block in data.decode().split("\n\n") if block.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def test_health_and_models(server, model):
    _, engine = model
    assert server.get("/health") == (200, {"status": "ok", "model": engine.name, "pending": 0})
    status, body = server.get("/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [(m["id"], m["object"], m["max_seq_len"]) for m in body["data"]] == \
        [(engine.name, "model", engine.max_seq_len)]


# 5 to 21 tokens with BOS (the context is 32): the long ones go through a prefill chunk first.
PROMPTS = ["To be, or not", "def f(x):\n    return", "O Romeo, Romeo! wherefore", "import os",
           "Friends, Romans, countrymen", "x = [", "Now is the winter of our discontent", "class A:"]


def test_greedy_completion_equals_engine_generate(server, model):
    _, engine = model
    status, ctype, data = server.complete(prompt=PROMPTS[0], max_tokens=8, temperature=0)
    body = json.loads(data)
    assert status == 200 and ctype.startswith("application/json")
    assert body["object"] == "text_completion" and body["model"] == engine.name
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["text"] == expected(engine, PROMPTS[0], max_new_tokens=8, temperature=0.0)
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(engine.encode(PROMPTS[0]))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (usage["completion_tokens"] == 8) == (choice["finish_reason"] == "length")


def test_sampling_fields_reach_the_engine(server, model):
    """temperature, top_k, top_p and seed are forwarded: the server's sample is the engine's."""
    _, engine = model
    fields = dict(max_tokens=10, temperature=0.9, top_k=50, top_p=0.95, seed=11)
    texts = {json.loads(server.complete(prompt=PROMPTS[2], **fields)[2])["choices"][0]["text"] for _ in range(2)}
    want = expected(engine, PROMPTS[2], max_new_tokens=10, temperature=0.9, top_k=50, top_p=0.95, seed=11)
    assert texts == {want}


def test_stream_concatenates_to_the_same_text(server, model):
    _, engine = model
    status, ctype, data = server.complete(prompt=PROMPTS[1], max_tokens=12, temperature=0, stream=True)
    assert status == 200 and ctype.startswith("text/event-stream")
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2 and all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["usage"]["completion_tokens"] <= 12
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == expected(engine, PROMPTS[1], max_new_tokens=12, temperature=0.0)
    whole = json.loads(server.complete(prompt=PROMPTS[1], max_tokens=12, temperature=0)[2])
    assert text == whole["choices"][0]["text"]


def test_eight_concurrent_requests_each_get_their_own_answer(server, model):
    """Different prompts (and lengths) at once, half of them streamed: each answer equals the
    engine's sequential one, so no request saw another's cache or tokens."""
    _, engine = model
    want = [expected(engine, p, max_new_tokens=10, temperature=0.0) for p in PROMPTS]
    assert len(set(want)) >= 4, want  # otherwise a mix-up could not show
    got: dict[int, str] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def client(i: int) -> None:
        barrier.wait(TIMEOUT)
        status, _, data = server.complete(prompt=PROMPTS[i], max_tokens=10, temperature=0, stream=i % 2 == 1)
        assert status == 200, data
        if i % 2:
            got[i] = "".join(json.loads(e)["choices"][0]["text"] for e in sse_events(data)[:-1])
        else:
            got[i] = json.loads(data)["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * TIMEOUT)
    assert [got.get(i) for i in range(len(PROMPTS))] == want


TOO_LONG = "x" * 5000
BAD = [
    # (body, status, words the message must contain, the field named)
    (b'{"prompt": "a", "max_tokens": ', 400, ["malformed JSON"], None),
    (b'["a"]', 400, ["JSON object"], None),
    (b'\xff\xfe', 400, ["UTF-8"], None),
    (b'{"prompt": "a", "temperature": NaN}', 400, ["NaN"], None),
    (b'{"max_tokens": 3}', 400, ["missing", "prompt"], "prompt"),
    (b'{"prompt": "a", "echo": true}', 400, ["unknown field 'echo'"], "echo"),
    (b'{"prompt": "a", "max_tokens": "8"}', 400, ["integer", "string"], "max_tokens"),
    (b'{"prompt": "a", "max_tokens": true}', 400, ["integer", "boolean"], "max_tokens"),
    (b'{"prompt": ["a"]}', 400, ["string", "array"], "prompt"),
    (b'{"prompt": "a", "stream": 1}', 400, ["true or false"], "stream"),
    (b'{"prompt": "a", "max_tokens": 0}', 400, [">= 1"], "max_tokens"),
    (b'{"prompt": "a", "max_tokens": 100000}', 400, ["{max_seq_len}"], "max_tokens"),
    (b'{"prompt": "a", "temperature": -0.5}', 400, [">= 0"], "temperature"),
    (b'{"prompt": "a", "top_p": 0}', 400, ["(0, 1]"], "top_p"),
    (b'{"prompt": "a", "top_p": 1.5}', 400, ["(0, 1]"], "top_p"),
    (b'{"prompt": "a", "top_k": -1}', 400, [">= 0"], "top_k"),
    (b'{"prompt": "a", "seed": -3}', 400, ["seed"], "seed"),
    (b'{"prompt": "a", "n": 2}', 400, ["must be 1"], "n"),
    (b'{"prompt": "a", "model": "gpt-4"}', 404, ["gpt-4"], "model"),
    (json.dumps({"prompt": TOO_LONG}).encode(), 413, ["4096 bytes"], None),
]


@pytest.mark.parametrize("body,status,words,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_json_error_and_the_server_lives_on(server, model, body, status, words, param):
    _, engine = model
    got, ctype, data = server.request("POST", "/v1/completions", body)
    err = json.loads(data)["error"]
    assert (got, ctype.split(";")[0]) == (status, "application/json"), data
    for w in words:
        assert w.format(max_seq_len=engine.max_seq_len) in err["message"], err
    assert err["param"] == param and "\n" not in err["message"]
    assert server.get("/health")[0] == 200


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/completions", 405), ("DELETE", "/health", 405),
                                                ("GET", "/v2/nothing", 404)])
def test_wrong_method_or_path_is_a_json_error(server, method, path, status):
    got, ctype, data = server.request(method, path)
    assert (got, ctype.split(";")[0]) == (status, "application/json")
    assert path in json.loads(data)["error"]["message"]


def test_a_busy_port_is_one_line_error():
    from mgr.infer.server import bind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(MgrError, match="cannot listen on 127.0.0.1") as e:
            bind("127.0.0.1", s.getsockname()[1])
    assert "\n" not in str(e.value)


# ---- pure pieces: request validation and incremental detokenisation ------------------------------

@given(st.dictionaries(st.sampled_from(["prompt", "max_tokens", "temperature", "top_p", "top_k", "seed",
                                        "stream", "n", "user", "model", "stop", "logprobs"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 12),
                                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                                 st.lists(st.integers(), max_size=2))))
@settings(max_examples=150, deadline=None)
def test_validation_accepts_exactly_the_documented_subset(obj):
    """Any JSON object is either a valid request or a 400 naming a field; never another error."""
    try:
        req = parse_completion(parse_json(json.dumps(obj).encode()))
    except RequestError as e:
        assert e.status == 400 and e.param is not None and "\n" not in e.message
        return
    assert isinstance(req.prompt, str) and "stop" not in obj and "logprobs" not in obj
    assert req.max_tokens >= 1 and req.temperature >= 0 and isinstance(req.stream, bool)
    assert req.top_p is None or 0 < req.top_p <= 1
    assert 0 <= req.resolved_seed() < 2 ** 32


def _utf8(ids):
    return bytes(ids).decode("utf-8", errors="replace")


@given(st.lists(st.lists(st.integers(0, 255), max_size=4), max_size=12))
@settings(max_examples=300, deadline=None)
def test_stream_pieces_concatenate_to_the_whole_decode(pushes):
    """Byte-level tokens split characters anywhere; the streamed pieces still add up exactly."""
    text = TextStream(_utf8)
    pieces = [text.push(p) for p in pushes] + [text.finish()]
    assert "".join(pieces) == _utf8([b for p in pushes for b in p])


def test_stream_pieces_with_the_real_tokenizer(model):
    _, engine = model
    for ids in ([5, 200, 9, 17, 250, 31], list(range(4, 60)), [260, 261, 262, 100]):
        ids = [i % engine.vocab_size for i in ids]
        text = TextStream(engine.decode)
        assert "".join([text.push([i]) for i in ids] + [text.finish()]) == engine.decode(ids)


@pytest.mark.parametrize("args,words", [
    ([], ["exactly one of --run", "--model"]),
    (["--model", "m", "--run", "r"], ["exactly one of"]),
    (["--model", "/nonexistent-export"], ["/nonexistent-export"]),
    (["--model", "m", "--port", "70000"], ["--port", "70000"]),
    (["--model", "m", "--max-body-bytes", "0"], ["--max-body-bytes"]),
])
def test_serve_bad_flags_are_one_line_errors(args, words):
    from typer.testing import CliRunner

    from mgr.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output
    for w in words:
        assert w in err, err
