"""Glue between `mgr bench-fixed-flops` and the library: defaults, sweep files, live display."""

from __future__ import annotations

from pathlib import Path

from mgr.bench import BenchConfig, load_sweep, run_bench
from mgr.config import TrainConfig

# The default suite: every registered algebra with AdamW on a small decoder, sized so the whole
# grid finishes in 3-4 minutes on a 2-core CPU with most of it in train steps (640-1,070 steps per
# arm at 6e11 FLOPs). Validation every 375 steps and at the end: 2-3 points per curve, since each
# pass over the validation tokens costs as much as ~10-20 train steps and is the largest cost of a
# run besides its steps. (At 2e11 and every 125 steps, a warm-cache run spent 69% of its 75 s in
# train steps; at 6e11 and every 375, 86% of 163 s.)
DEFAULTS = {
    "optimizer": ("adamw",), "schedule": ("cosine",), "seeds": (0, 1), "target_flops": 6e11,
    "model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 4},
    "data": {"seq_len": 64, "batch_size": 8, "vocab_size": 2048, "val_tokens": 16384},
    "train": {"learning_rate": 3e-3, "warmup_steps": 10, "eval_every": 375, "min_steps": 20},
}


def merge(flags: dict, sweep: Path | None) -> BenchConfig:
    """Built-in defaults < sweep file < flags given on the command line; named model variants
    come from the sweep file only."""
    import attention

    from_sweep = load_sweep(sweep) if sweep else {}
    out: dict = {"attention": tuple(attention.names())}
    for key in ("optimizer", "schedule", "seeds", "target_flops"):
        out[key] = DEFAULTS[key]
    for layer in (from_sweep, {k: v for k, v in flags.items() if v is not None and not isinstance(v, dict)}):
        out.update({k: v for k, v in layer.items() if not isinstance(v, dict)})
    for section in ("model", "data", "train"):
        merged = dict(DEFAULTS[section])
        merged.update(from_sweep.get(section, {}))
        merged.update({k: v for k, v in (flags.get(section) or {}).items() if v is not None})
        out[section] = merged
    out["variants"] = from_sweep.get("variants", {})
    return BenchConfig(**out)


def run_from_cli(flags: dict, sweep: Path | None, suite_dir: Path, artifacts_root: Path,
                 trackers: list | None = None) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from mgr.runtime import enable_compilation_cache, maybe_init_distributed, request_devices

    cfg = merge(flags, sweep)
    enable_compilation_cache()
    # Before JAX starts its backends; the count TrainConfig derives from a flag's or a sweep's
    # `devices` or `mesh` (a bad one is refused here, in one line).
    request_devices(TrainConfig(**cfg.train).devices)
    maybe_init_distributed()
    console = Console(stderr=True)
    total = len(list(cfg.runs()))

    def on_start() -> None:  # after the lock and the budget check, so a refusal stays one line
        console.print(f"[bold]fixed-FLOPs benchmark[/] {suite_dir.name}: {len(cfg.arms())} arms x "
                      f"{len(cfg.learning_rates())} learning rates x {len(cfg.seeds)} seeds at "
                      f"{', '.join(f'{b:.3g}' for b in cfg.budget_list())} FLOPs each")

    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=total)

        def on_result(rel: str, s: dict) -> None:
            val = s.get("results", {}).get("val_ce_final")
            desc = f"{rel}: {s['status']}" + (f" val CE {val:.3f}" if val is not None else "")
            bar.update(task, advance=1, description=desc)
            if not console.is_terminal:
                console.print(desc)

        summary = run_bench(cfg, suite_dir, artifacts_root, on_start=on_start, on_result=on_result,
                            trackers=trackers)
    table = Table(title=f"validation CE (reported half) at {max(cfg.budget_list()):.3g} FLOPs",
                  title_justify="left")
    for col in ("arm", "val CE", "±95%", "Δ vs base", "Holm p", "g", "best lr", "steps", "tok/s", "status"):
        table.add_column(col)
    for a in summary["arms"]:
        v, d = a["val_ce"], a["delta_vs_baseline"]
        table.add_row(a["arm"], _f(v["mean"], ".4f"), _f(v["ci95"], ".4f"),
                      _f(d and d["diff"], "+.4f") + (" *" if d and d["significant"] else ""),
                      _f(d and d["p_holm"], ".3g"), _f(d and d["effect_size"], ".2f"), _f(a["best_lr"], "g"),
                      _f(a["steps"], ".0f"), _f(a["tokens_per_second"], ",.0f"),
                      ", ".join(f"{k} {n}" for k, n in sorted(a["statuses"].items())))
    out = Console()
    out.print(table)
    for line in summary["conclusions"]["text"]:
        out.print(f"- {line}")
    return summary


def _f(x, fmt):
    return "–" if x is None else format(x, fmt)
