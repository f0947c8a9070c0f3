"""`mgr serve` and `mgr bench-inference`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from core.errors import MgrError
from mgr.cli.app import app, user_errors


@app.command()
@user_errors
def serve(
    run: Optional[str] = typer.Option(None, "--run", help="training run id (under --artifacts-dir) or run directory"),
    model: Optional[Path] = typer.Option(None, "--model", help="an export directory (mgr export)"),
    checkpoint: str = typer.Option("final", help="best, final or a step number (with --run)"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    host: str = typer.Option("127.0.0.1", help="interface to bind; loopback unless told otherwise"),
    port: int = typer.Option(8000, help="TCP port (0: any free port, printed at start)"),
    max_body_bytes: int = typer.Option(1 << 20, help="larger request bodies get 413"),
    max_queue: int = typer.Option(64, help="requests waiting or running beyond this get 429"),
):
    """Serve a model over HTTP: POST /v1/completions (OpenAI subset, SSE with stream), GET /v1/models, GET /health."""
    if (run is None) == (model is None):
        raise MgrError("give exactly one of --run RUN or --model DIR")
    if max_queue < 1:
        raise MgrError(f"--max-queue must be positive, got {max_queue}")
    if not 0 <= port <= 65535 or max_body_bytes < 1:  # before a possibly slow model load
        raise MgrError(f"--port must be in 0..65535 (got {port}) and --max-body-bytes positive (got {max_body_bytes})")
    from mgr.runtime import enable_compilation_cache
    from mgr.infer import load_engine
    from mgr.infer.server import serve as serve_engine

    enable_compilation_cache()
    engine = load_engine(run=run, artifacts_dir=artifacts_dir, checkpoint=checkpoint, model_dir=model)
    serve_engine(engine, host, port, max_body_bytes=max_body_bytes, max_queue=max_queue,
                 announce=lambda line: typer.echo(line))


def _csv(text: Optional[str]) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


@app.command("bench-inference")
@user_errors
def bench_inference(
    algebras: Optional[str] = typer.Option(None, "--algebras", "-a", help="comma-separated; default: every registered algebra"),
    quantize: str = typer.Option("float32,int8", help="weights to measure: float32, int8 or both"),
    requests: int = typer.Option(100, help="requests at batch 1 per configuration"),
    new_tokens: int = typer.Option(32, help="tokens generated per request"),
    prompt_tokens: int = typer.Option(32, help="prompt length of every request"),
    batch: int = typer.Option(8, help="rows of the batched throughput measurement"),
    batch_rounds: int = typer.Option(4, help="generate_batch calls timed at --batch"),
    d_model: int = typer.Option(128), n_layers: int = typer.Option(2), n_heads: int = typer.Option(4),
    vocab_size: int = typer.Option(8000), max_seq_len: int = typer.Option(128),
    tokenizer_vocab: int = typer.Option(8000, help="pieces of the corpus tokenizer (<= --vocab-size)"),
    corpus_bytes: int = typer.Option(8_000_000, help="size of the embedded corpus the tokenizer learns from"),
    timeout_s: float = typer.Option(900.0, help="time limit per configuration"),
    run_id: Optional[str] = typer.Option(None),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
):
    """Time to first token, per-token and per-request latency, tokens/s at batch 1 and 8, and peak RSS,
    for every algebra in float32 and int8, each in a fresh process; writes
    artifacts/bench/inference/<run_id>/. The last output line is the JSON record."""
    from mgr.runtime import artifacts, enable_compilation_cache, runs
    from mgr.bench.inference import InferenceBenchConfig, run_inference_bench
    from mgr.bench.inference_report import MB, table

    cfg = InferenceBenchConfig(
        algebras=_csv(algebras), weights=_csv(quantize), requests=requests, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, batch=batch, batch_rounds=batch_rounds, d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, vocab_size=vocab_size, max_seq_len=max_seq_len, tokenizer_vocab=tokenizer_vocab,
        corpus_bytes=corpus_bytes, timeout_s=timeout_s)
    if not cfg.weights:
        raise MgrError("--quantize must name float32, int8 or both")
    out = runs.run_dir(artifacts_dir, "bench", "inference", run_id=run_id)
    enable_compilation_cache()

    def progress(row):
        detail = (f"request p95 {row['request_latency_ms']['p95']:.1f} ms, peak RSS "
                  f"{row['peak_rss_bytes'] / MB:.0f} MB" if row["status"] == "ok" else row.get("reason", ""))
        typer.echo(f"{row['algebra']} {row['weights']}: {row['status']} ({detail})", err=True)

    summary = run_inference_bench(cfg, out, progress)
    typer.echo(table(summary))
    typer.echo(f"record: {out}/summary.json")
    typer.echo(json.dumps(artifacts.as_recorded(summary), separators=(",", ":")))
    if not summary["all_ok"]:
        raise typer.Exit(1)
