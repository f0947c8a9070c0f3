"""`mgr bench-inference`: latency, throughput and peak memory of generation, per algebra and dtype.

Each (algebra, weights) configuration runs in a fresh spawned interpreter, so the peak resident
set size it reports (read in the child; see `peak_rss_bytes` for why VmHWM and not ru_maxrss)
is that configuration's own, JAX runtime included, and never a high-water mark left by an
earlier one or by the parent.
Configurations run one after another, so they do not compete for the cores.

The model has random weights (latency and memory do not depend on training) at the training
guide's size by default: d = 128, 2 layers, 4 heads, vocabulary 8000, context 128. The parent
draws them with `random_engine` (quantising for int8) and hands the arrays to the child, which
builds its Engine from them as a deployed process builds one from an export: the child's peak
is then that of loading weights and serving, not of compiling and running a random initialiser
(which alone added ~80 MB of peak RSS on the development machine). Every
configuration gets the same prompts: consecutive windows of `prompt_tokens` tokens of the
embedded corpus's validation shard. Generation is greedy and ignores EOS, so every request
produces exactly `new_tokens` tokens and costs the same work.

Per configuration, the first request at batch 1 and the first batch of `batch` rows compile (or
load from the compilation cache) the engine's programs; they are timed apart as compile seconds
and excluded from everything else. Then `requests` requests at batch 1, one after another, give
time to first token (prefill + the first sampled token), per-token latency (the gaps between
later tokens) and per-request latency, as percentiles, and tokens/s; `batch_rounds` calls of
`generate_batch` give tokens/s at batch `batch`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import MgrError
from mgr.bench.inference_report import BUDGETS, render, within_budget

SCHEMA = "mgr.bench.inference.v1"
WEIGHTS = ("float32", "int8")


@dataclass(frozen=True, kw_only=True)
class InferenceBenchConfig:
    """Everything a benchmark run depends on (recorded in summary.json)."""

    algebras: tuple[str, ...] = ()  # empty: every registered algebra
    weights: tuple[str, ...] = WEIGHTS
    requests: int = 100
    prompt_tokens: int = 32
    new_tokens: int = 32
    batch: int = 8
    batch_rounds: int = 4
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    vocab_size: int = 8000
    max_seq_len: int = 128
    tokenizer_vocab: int = 8000
    corpus_bytes: int = 8_000_000
    seed: int = 0
    timeout_s: float = 900.0

    def __post_init__(self):
        import attention

        for name in self.algebras:
            attention.get(name)  # MgrError listing the registered names
        for w in self.weights:
            if w not in WEIGHTS:
                raise MgrError(f"--quantize must be among {', '.join(WEIGHTS)}, got '{w}'")
        for name in ("requests", "prompt_tokens", "new_tokens", "batch", "batch_rounds", "timeout_s"):
            if getattr(self, name) <= 0:
                raise MgrError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.prompt_tokens + self.new_tokens > self.max_seq_len:
            raise MgrError(f"--prompt-tokens {self.prompt_tokens} + --new-tokens {self.new_tokens} exceed "
                           f"the context of {self.max_seq_len} tokens")
        if self.tokenizer_vocab > self.vocab_size:
            raise MgrError(f"tokenizer vocabulary {self.tokenizer_vocab} exceeds the model's {self.vocab_size}")
        self.model_config("standard" if not self.algebras else self.algebras[0])  # shapes valid

    def names(self) -> tuple[str, ...]:
        import attention

        return self.algebras or tuple(attention.names())

    def model_config(self, algebra: str):
        from mgr.config import ModelConfig

        return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, n_kv_heads=self.n_heads, max_seq_len=self.max_seq_len,
                           attention=algebra)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def _tokenizer_and_prompts(cfg: InferenceBenchConfig):
    """The corpus tokenizer (trained once, then cached) and the shared prompt windows."""
    from mgr.config import DataConfig
    from mgr.data import corpus
    from mgr.data.tokenizer import train_or_load

    dcfg = DataConfig(vocab_size=cfg.tokenizer_vocab, max_corpus_bytes=cfg.corpus_bytes)
    shards = corpus.embedded_shards(corpus.build_embedded_corpus(dcfg))
    tok = train_or_load(shards[:-1], cfg.tokenizer_vocab, dcfg.tokenizer_type)
    need = cfg.prompt_tokens * max(cfg.requests, cfg.batch * cfg.batch_rounds)
    stream: list[int] = []
    for text in corpus.iter_texts(shards[-1]):
        stream += tok.encode(text)
        if len(stream) >= need:
            break
    if len(stream) < cfg.prompt_tokens:
        raise MgrError(f"the validation shard has only {len(stream)} tokens; need {cfg.prompt_tokens} per prompt")
    n = len(stream) // cfg.prompt_tokens
    prompts = [stream[i * cfg.prompt_tokens:(i + 1) * cfg.prompt_tokens] for i in range(n)]
    return tok, prompts


def _percentiles(xs: list[float], scale: float = 1e3) -> dict[str, float | None]:
    import numpy as np

    if not xs:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    a = np.asarray(xs) * scale
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def proc_status_bytes(*fields: str, pid: int | str = "self") -> dict[str, int]:
    """The `fields` of /proc/PID/status that are sizes (VmRSS, VmHWM, ...) in bytes; the ones
    the file lacks, or all of them when it cannot be read (no /proc, a process gone), are absent."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in fields:
                    out[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def peak_rss_bytes() -> tuple[int, str]:
    """This process's peak resident set size in bytes, and where it was read.

    Linux keeps `getrusage(RUSAGE_SELF).ru_maxrss` across fork + exec, so a spawned child starts
    with its parent's high-water mark (a parent holding 330 MB made a fresh child report 330 MB
    before it did anything). `VmHWM` in /proc/self/status belongs to the address space, which exec
    replaces, so it is the child's own; ru_maxrss (KiB on Linux, bytes on macOS) is the fallback.
    """
    hwm = proc_status_bytes("VmHWM").get("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in the current (fresh) process: the row of the record."""
    from mgr.runtime import enable_compilation_cache

    enable_compilation_cache(job["jax_cache_dir"] or None)
    import jax
    from flax import nnx

    from mgr.data.tokenizer import Tokenizer
    from mgr.infer.engine import Engine, SamplingParams
    from mgr.model import Decoder

    cfg = InferenceBenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})
    mcfg = cfg.model_config(job["algebra"])
    tok = Tokenizer(job["tokenizer"]["proto"], job["tokenizer"]["digest"], job["tokenizer"]["type"])
    prompts = job["prompts"]
    engine = Engine(mcfg, job["arrays"], tok, name=f"random-{cfg.seed}", quantization=_quantization(job["weights"]))
    # EOS must not end a request early: every request then costs exactly the same work.
    greedy = SamplingParams(max_new_tokens=cfg.new_tokens, temperature=0.0, seed=cfg.seed, stop_at_eos=False)

    def rows(i: int) -> list[list[int]]:
        return [prompts[(i * cfg.batch + j) % len(prompts)] for j in range(cfg.batch)]

    t0 = time.perf_counter()
    engine.generate(prompts[0], greedy)
    compile_b1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.generate_batch(rows(0), greedy)
    compile_bn = time.perf_counter() - t0

    ttft, gaps, latency, produced = [], [], [], 0
    for i in range(cfg.requests):
        start = last = time.perf_counter()
        for n, token in enumerate(engine.stream(prompts[i % len(prompts)], greedy)):
            int(token)  # the token is on the host: the step has finished
            now = time.perf_counter()
            (ttft if n == 0 else gaps).append(now - last)
            last = now
            produced += 1
        latency.append(last - start)

    batch_s, batch_tokens = 0.0, 0
    for r in range(cfg.batch_rounds):
        t0 = time.perf_counter()
        outs = engine.generate_batch(rows(r), greedy)
        batch_s += time.perf_counter() - t0
        batch_tokens += sum(len(o) for o in outs)
    rss, rss_source = peak_rss_bytes()
    # Counted on an abstract model (shapes only), after the RSS reading, so it costs nothing.
    params = sum(x.size for x in jax.tree.leaves(
        nnx.state(nnx.eval_shape(lambda: Decoder(mcfg, rngs=nnx.Rngs(0))), nnx.Param)))
    return {
        "algebra": job["algebra"], "weights": job["weights"], "status": "ok", "params": int(params),
        "compile_seconds": {"batch_1": compile_b1, f"batch_{cfg.batch}": compile_bn},
        "requests": cfg.requests, "tokens": produced,
        "ttft_ms": _percentiles(ttft), "token_latency_ms": _percentiles(gaps),
        "request_latency_ms": _percentiles(latency),
        "tokens_per_second_batch_1": produced / sum(latency),
        "tokens_per_second_batch_n": batch_tokens / batch_s, "batch": cfg.batch, "batch_tokens": batch_tokens,
        "peak_rss_bytes": rss, "peak_rss_source": rss_source, "pid": os.getpid(),
    }


def _quantization(weights: str) -> str | None:
    return None if weights == "float32" else weights


def random_arrays(cfg: InferenceBenchConfig, algebra: str, weights: str) -> dict[str, Any]:
    """Host copies of a random model's weights (int8 ones quantised), for a child to load."""
    import jax

    from mgr.infer.engine import random_engine

    engine = random_engine(cfg.model_config(algebra), None, seed=cfg.seed, quantize=_quantization(weights))
    return jax.device_get(engine.weights)


def _child(conn, job: dict[str, Any]) -> None:
    try:
        conn.send(("ok", measure(job)))
    except BaseException as e:  # the parent records it; one failing configuration stops nothing
        conn.send(("error", f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]))
    finally:
        conn.close()


def run_in_child(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """`measure(job)` in a freshly spawned process (never forked: a forked JAX is unsafe)."""
    from multiprocessing import get_context

    ctx = get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, job), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    failed = {"algebra": job["algebra"], "weights": job["weights"]}
    answered = False
    try:
        if recv.poll(timeout_s):
            kind, value = recv.recv()
            answered = True
            row = value if kind == "ok" else {**failed, "status": "error", "reason": value}
        else:
            row = {**failed, "status": "timeout", "reason": f"no result within {timeout_s:g} s"}
    except EOFError:  # died without a word (killed, out of memory, crashed in native code)
        row = {**failed, "status": "error", "reason": "the measuring process died"}
    finally:
        recv.close()
        if answered:
            proc.join(30)  # it is exiting: let it flush and tear down JAX
        if proc.is_alive():
            proc.kill()
        proc.join(10)
    if not answered and row["status"] == "error":
        row["reason"] += f" (exit code {proc.exitcode})"
    row["wall_seconds"] = time.perf_counter() - t0
    return row


def run_inference_bench(cfg: InferenceBenchConfig, out: Path, progress=None) -> dict[str, Any]:
    """Measure every configuration, write `out/{summary.json, run.md}`, return the summary."""
    import jax

    from mgr.runtime import artifacts, runs

    tok, prompts = _tokenizer_and_prompts(cfg)
    shared = {"config": cfg.to_dict(), "prompts": prompts,
              "jax_cache_dir": jax.config.jax_compilation_cache_dir or "",
              "tokenizer": {"proto": tok.model_proto, "digest": tok.digest, "type": tok.model_type}}
    rows = []
    t0 = time.perf_counter()
    with runs.locked(out, "benchmark run"):
        for name in cfg.names():
            for weights in cfg.weights:
                try:
                    arrays = random_arrays(cfg, name, weights)
                except Exception as e:  # recorded like a failure in the child: the rest still run
                    row = {"algebra": name, "weights": weights, "status": "error",
                           "reason": f"building random weights: {type(e).__name__}: {e}"[:500]}
                else:
                    row = run_in_child({**shared, "algebra": name, "weights": weights, "arrays": arrays},
                                       cfg.timeout_s)
                    del arrays
                if row["status"] == "ok":
                    row["within_budget"] = within_budget(row)
                rows.append(row)
                if progress:
                    progress(row)
        summary = {
            "schema_version": SCHEMA, "meta": artifacts.provenance(out.name), "config": cfg.to_dict(),
            "tokenizer": {"vocab_size": tok.vocab_size, "digest": tok.digest, "type": tok.model_type,
                          "corpus": "embedded", "corpus_bytes": cfg.corpus_bytes},
            "prompts": {"count": min(len(prompts), cfg.requests), "tokens_each": cfg.prompt_tokens,
                        "source": "consecutive windows of the embedded corpus's validation shard"},
            "budgets": BUDGETS, "rows": rows, "wall_seconds": time.perf_counter() - t0,
            "all_ok": all(r["status"] == "ok" for r in rows),
            "all_within_budget": all(r.get("within_budget", False) for r in rows),
        }
        artifacts.write_json(out / "summary.json", summary)
        artifacts.atomic_write(out / "run.md", render(artifacts.as_recorded(summary)))
    return summary
