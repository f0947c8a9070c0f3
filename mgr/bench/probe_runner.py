"""Glue between `mgr probe` and the library: defaults, sweep files, flags, live display, printed table."""

from __future__ import annotations

from pathlib import Path

from mgr.bench.probe_suite import ProbeConfig, run_probe_suite

# The default suite, sized for the 2-core CPU machine (README, "Probe tasks"): every registered
# algebra with AdamW on a 2-layer, width-64 decoder, on Zoology's recall at (T 32, 4 pairs), a
# 2-point learning-rate grid searched on seed 0 (the chosen rate then runs seeds 1 and 2), in
# two worker processes. 6e11 FLOPs give standard attention about 1,700 steps: at lr 2e-3 that
# is enough for its recall to form (0.95-0.99 over 3 seeds), at 1e-3 not (0.86 at seed 0).
DEFAULTS = {
    "tasks": ("mqar",), "task_options": {"mqar": {"settings": [[32, 4]]}},
    "optimizer": ("adamw",), "schedule": ("cosine",),
    "seeds": (0, 1, 2), "lr_grid": (2e-3, 4e-3), "budgets": (6e11,), "batch_size": 16, "workers": 2,
    "search_seeds": 1,
    "model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 4},
    "train": {"warmup_steps": 10, "min_steps": 20},
}


# Where each key of a probe sweep file lives: [grid], [budget], [probe]; then the tables
# [task_options.TASK], [model], [train] and [variants.NAME] (ModelConfig overrides).
SWEEP_KEYS = {"grid": ("tasks", "attention", "optimizer", "schedule", "seeds"),
              "budget": ("budgets", "lr_grid", "search_seeds", "baseline", "timeout_s"),
              "probe": ("batch_size", "workers")}
SECTIONS = ("task_options", "model", "train", "variants")


def load_probe_sweep(path: Path) -> dict:
    """A probe sweep file as ProbeConfig fields; an unknown section or key is one line."""
    from core.errors import MgrError
    from mgr.bench.suite import read_toml

    raw = read_toml(path, (*SWEEP_KEYS, *SECTIONS))
    out: dict = {}
    for section, keys in SWEEP_KEYS.items():
        table = raw.get(section, {})
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise MgrError(f"--sweep: unknown keys {unknown} in [{section}] of {path}; valid: {', '.join(keys)}")
        out.update({k: tuple(v) if isinstance(v, list) else v for k, v in table.items()})
    out.update({k: dict(raw[k]) for k in SECTIONS if k in raw})
    return out


def merge(flags: dict, sweep: Path | None = None) -> ProbeConfig:
    """Built-in defaults < sweep file < flags given on the command line (None means not given);
    named model variants come from the sweep file only."""
    import attention

    tables = ("model", "train", "task_options", "variants")
    from_sweep = load_probe_sweep(sweep) if sweep else {}
    out = {"attention": tuple(attention.names()), **{k: v for k, v in DEFAULTS.items() if k not in tables}}
    for layer in (from_sweep, flags):
        out.update({k: v for k, v in layer.items() if v is not None and k not in tables})
    for section in tables:  # merged per key: a task's options, a model field, a variant
        out[section] = {**DEFAULTS.get(section, {}), **from_sweep.get(section, {}),
                        **{k: v for k, v in (flags.get(section) or {}).items() if v is not None}}
    return ProbeConfig(**out)


def run_from_cli(flags: dict, suite_dir: Path, sweep: Path | None = None, trackers: list | None = None) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from mgr.bench.probe_report import HEADER, table_rows
    from mgr.runtime import enable_compilation_cache

    cfg = merge(flags, sweep)
    enable_compilation_cache()
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]probe"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=1)

        def on_start(total: int) -> None:
            bar.update(task, total=total)
            console.print(f"[bold]probe suite[/] {suite_dir.name}: {len(cfg.arms())} arms x {len(cfg.tasks)} "
                          f"tasks x {len(cfg.budgets)} budgets x {len(cfg.lr_grid)} learning rates x "
                          f"{len(cfg.seeds)} seeds")

        def on_result(rel: str, rec: dict) -> None:
            acc = rec.get("results", {}).get("headline_accuracy")
            desc = f"{rel}: {rec['status']}" + (f" accuracy {acc:.3f}" if acc is not None else "")
            bar.update(task, advance=1, description=desc)
            if not console.is_terminal:
                console.print(desc)

        summary = run_probe_suite(cfg, suite_dir, on_start=on_start, on_result=on_result, trackers=trackers)
    table = Table(title="accuracy on answer positions (mean over seeds at the best learning rate)",
                  title_justify="left")
    for col in HEADER:
        table.add_column(col)
    for row in table_rows(summary):
        table.add_row(*row)
    out = Console()
    out.print(table)
    for line in summary["evidence"]["conclusions"]:
        out.print(f"- {line}")
    return summary
