"""`mgr train`: one configuration, from flags or from the record of a run to resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from core.errors import MgrError
from mgr.cli.app import COVERAGE_HELP, DTYPE_HELP, USER_SYMBOLS_HELP, app, parse_options, symbols, user_errors

# Shared by `train`, `bench-fixed-flops` and `probe`.
TRACKER_HELP = ("experiment trackers beside the JSON record, comma-separated: tensorboard, mlflow "
                "(the `trackers` extra); a suite is one experiment, each configuration one run")
MESH_HELP = ("device mesh, e.g. data=2,fsdp=2: batches split over data x fsdp devices, parameters and "
             "optimizer state over fsdp (default: --devices, or one device)")
TRACKER_DIR_HELP = ("where trackers write: DIR/tensorboard, DIR/mlruns (default: tracking/ beside the "
                    "artifacts dir; MLflow refuses paths through a directory named artifacts)")


@app.command()
@user_errors
def train(
    attention: str = typer.Option("standard", "--attention", "-a",
                                  help="algebra name, or comma-separated names tiled over layers"),
    optimizer: str = typer.Option("adamw", "--optimizer", "-o"),
    schedule: str = typer.Option("cosine", "--schedule"),
    steps: Optional[int] = typer.Option(None, help="training steps (default 200 unless --target-flops)"),
    target_flops: Optional[float] = typer.Option(None, help="budget in XLA-counted FLOPs; sets the steps"),
    seed: int = typer.Option(0),
    n_layer: int = typer.Option(2),
    n_head: int = typer.Option(4),
    n_kv_head: Optional[int] = typer.Option(None, help="kv heads (default: n_head)"),
    n_embd: int = typer.Option(128),
    seq_len: int = typer.Option(128),
    batch_size: int = typer.Option(8),
    vocab_size: int = typer.Option(4096),
    tokenizer: str = typer.Option("bpe", help="bpe or unigram"),
    user_symbols: Optional[str] = typer.Option(None, help=USER_SYMBOLS_HELP),
    character_coverage: float = typer.Option(0.9995, help=COVERAGE_HELP),
    lr: float = typer.Option(3e-3, "--lr", help="peak learning rate"),
    warmup: int = typer.Option(20, help="warmup steps"),
    eval_every: int = typer.Option(50),
    checkpoint_every: int = typer.Option(100),
    attention_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"tropical": {"beta": 8}}'),
    ffn: str = typer.Option("relu2", "--ffn", help="feed-forward kind, or comma-separated kinds tiled over "
                            "layers (see `mgr list`)"),
    ffn_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"moe": {"n_experts": 8, "top_k": 2}}'),
    optimizer_options: Optional[str] = typer.Option(None, help="JSON of the optimizer's knobs"),
    schedule_options: Optional[str] = typer.Option(None, help="JSON of the schedule's knobs"),
    data: Optional[str] = typer.Option(None, help="directory of parquet shards with a 'text' column"),
    devices: Optional[int] = typer.Option(None, help="shard each batch over N devices (--mesh data=N); "
                                          "with --resume, the layout to continue on"),
    mesh: Optional[str] = typer.Option(None, "--mesh", help=MESH_HELP),
    run_id: Optional[str] = typer.Option(None, help="the run's directory name (default: a UTC time stamp)"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    resume: bool = typer.Option(False, help="continue the run --run-id from its latest checkpoint"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    tracker: Optional[str] = typer.Option(None, "--tracker", help=TRACKER_HELP),
    tracker_dir: Optional[Path] = typer.Option(None, help=TRACKER_DIR_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
):
    """Train one configuration; writes artifacts/train/<run_id>/{summary.json, run.md, metrics.jsonl, checkpoints/}."""
    from mgr.config import DataConfig, ModelConfig, TrainConfig
    from mgr.runtime import enable_compilation_cache, maybe_init_distributed, request_devices, runs
    from mgr.train import finished_run, train as train_run

    root = artifacts_dir
    if resume:
        if run_id is None:
            raise MgrError("--resume needs --run-id of the run to continue")
        run_dir = runs.run_dir(root, "train", run_id=run_id)
        done = finished_run(run_dir)
        if done is not None:
            typer.echo(f"complete: run '{run_id}' already finished {_result_line(done)}; "
                       f"nothing to resume, record unchanged: {run_dir}/summary.json")
            return
        model_cfg, data_cfg, train_cfg = _configs_from_summary(run_dir)
        if mesh is not None or devices is not None:  # the layout asked for now, else the recorded one
            train_cfg = train_cfg.replace(**layout_flags(mesh, devices))
    else:
        names = tuple(a.strip() for a in attention.split(",") if a.strip())
        kinds = tuple(f.strip() for f in ffn.split(",") if f.strip())
        model_cfg = ModelConfig(
            vocab_size=vocab_size, d_model=n_embd, n_layers=n_layer, n_heads=n_head,
            n_kv_heads=n_head if n_kv_head is None else n_kv_head, max_seq_len=seq_len,
            attention=names[0] if len(names) == 1 else names,
            attention_options=parse_options(attention_options, "--attention-options"),
            ffn=kinds[0] if len(kinds) == 1 else kinds,
            ffn_options=parse_options(ffn_options, "--ffn-options"), compute_dtype=dtype)
        data_cfg = DataConfig(data_dir=data, vocab_size=vocab_size, tokenizer_type=tokenizer,
                              user_symbols=symbols(user_symbols), character_coverage=character_coverage,
                              seq_len=seq_len, batch_size=batch_size)
        if steps is None and target_flops is None:
            steps = 200
        train_cfg = TrainConfig(
            optimizer=optimizer, schedule=schedule, learning_rate=lr, warmup_steps=warmup,
            steps=steps, target_flops=target_flops, seed=seed, eval_every=eval_every,
            checkpoint_every=checkpoint_every, **layout_flags(mesh, devices),
            optimizer_options=parse_options(optimizer_options, "--optimizer-options"),
            schedule_options=parse_options(schedule_options, "--schedule-options"))
        run_dir = runs.run_dir(root, "train", run_id=run_id)
    from mgr.train.trackers import from_flags

    trackers = from_flags(tracker, tracker_dir, root)  # a missing package: one line, before training
    enable_compilation_cache()
    request_devices(train_cfg.devices)  # before JAX starts its backends
    maybe_init_distributed()
    summary = train_run(model_cfg, data_cfg, train_cfg, run_dir=run_dir, artifacts_root=root,
                        resume=resume, progress=progress and sys.stderr.isatty(), trackers=trackers,
                        sole_run=True)
    _print_result(summary, run_dir)
    if summary["status"] == "interrupted":
        raise typer.Exit(130)
    if summary["status"] != "ok":
        raise typer.Exit(1)


def layout_flags(mesh: Optional[str], devices: Optional[int]) -> dict:
    """TrainConfig's `mesh` and `devices` from `--mesh` and `--devices` (shared with bench-fixed-flops)."""
    from mgr.config import parse_mesh

    return {"mesh": None if mesh is None else parse_mesh(mesh), "devices": 1 if devices is None else devices}


def _configs_from_summary(run_dir: Path):
    from mgr.config import DataConfig, ModelConfig, TrainConfig

    path = run_dir / "summary.json"
    try:
        cfg = json.loads(path.read_text())["config"]
        return (ModelConfig.from_dict(cfg["model"]), DataConfig.from_dict(cfg["data"]),
                TrainConfig.from_dict(cfg["train"]))
    except FileNotFoundError:
        raise MgrError(f"--resume: no run record at {run_dir}/summary.json") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MgrError(f"--resume: unreadable {run_dir.name}/summary.json ({type(e).__name__})") from None


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _result_line(summary: dict) -> str:
    res = summary["results"]
    return (f"{res.get('steps_completed', 0)}/{summary['budget']['steps']} steps, "
            f"train CE {_num(res.get('train_ce_final'), '.4f')}, val CE {_num(res.get('val_ce_final'), '.4f')}, "
            f"{_num(res.get('tokens_per_second'), ',.0f')} tok/s")


def _print_result(summary: dict, run_dir: Path) -> None:
    typer.echo(f"{summary['status']}: {_result_line(summary)}, "
               f"{summary['budget']['flops_per_step_xla']:.3g} XLA FLOPs/step"
               + (f" ({summary['reason']})" if summary.get("reason") else ""))
    typer.echo(f"record: {run_dir}/summary.json")
