"""`mgr probe`: tasks x algebras x optimizers x schedules x learning rates x budgets x seeds.

Every run trains a fresh decoder on one probe task to one XLA-counted FLOPs budget and is
scored on the task's answer positions. The learning rate of each (arm, task, budget) is chosen
on the tuning slice and the result reported on the disjoint test slices (`mgr.bench.evidence`).
Before an algebra trains at all it passes the correctness gate (`mgr.bench.gate`) in this
process; an algebra that fails is recorded with the reason and gets no runs and no score. An
`attention` entry is a registered algebra or a named model variant (`mgr.bench.variants`),
which runs only if every algebra its layers use passed.

Like the fixed-FLOPs suite: one process per suite (a lock), finished runs are skipped when a
suite id is resumed, a failing run is recorded and the sweep goes on, and the suite record is
rewritten after every run, so a kill at any moment keeps everything finished.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.errors import MgrError
from mgr.bench import variants as variants_
from mgr.config import ModelConfig, TrainConfig

RUN_SCHEMA = "mgr.probe.run.v1"


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """The grid of a probe suite and what all of its runs share."""

    tasks: tuple[str, ...]
    attention: tuple[str, ...]  # registered algebra names or names of `variants`
    optimizer: tuple[str, ...] = ("adamw",)
    schedule: tuple[str, ...] = ("cosine",)
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_grid: tuple[float, ...] = (3e-3,)
    budgets: tuple[float, ...] = (3e10,)
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)   # ModelConfig fields but attention/vocab/length
    train: dict[str, Any] = field(default_factory=dict)   # TrainConfig fields but lr/seed/budget
    batch_size: int = 32
    baseline: str | None = None  # arm name; default: the first arm
    timeout_s: float | None = None
    gate: bool = True
    # Worker processes. One XLA CPU process keeps about one core busy at these sizes, so two
    # workers on two cores nearly halve a suite's wall time; results do not depend on it.
    workers: int = 1
    # The learning-rate search: None or 0 runs every seed at every rate; k runs the first k seeds at
    # every rate, chooses the rate on their tuning scores, then runs the other seeds at that
    # rate only (the reported scores still use every seed).
    search_seeds: int | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> ModelConfig overrides

    def __post_init__(self):
        from mgr.bench import probes

        for name in ("tasks", "attention", "optimizer", "schedule", "seeds", "lr_grid", "budgets"):
            if not getattr(self, name):
                raise MgrError(f"the probe grid needs at least one {name.replace('_', ' ')}")
        for name in self.tasks:
            probes.get(name).config(self.task_options.get(name))  # unknown names, bad knobs
        for name in self.task_options:
            probes.get(name)
        if any(lr <= 0 for lr in self.lr_grid) or any(b <= 0 for b in self.budgets):
            raise MgrError("learning rates and budgets must be positive")
        if len(set(self.lr_grid)) != len(self.lr_grid) or len(set(self.budgets)) != len(self.budgets):
            raise MgrError("--lr-grid and --budgets must not repeat a value")
        if self.search_seeds and not 0 < self.search_seeds <= len(self.seeds):
            raise MgrError(f"--search-seeds must be between 0 (every seed) and the number of seeds "
                           f"({len(self.seeds)}), got {self.search_seeds}")
        if self.batch_size <= 0 or self.workers <= 0:
            raise MgrError("batch size and workers must be positive")
        object.__setattr__(self, "variants", variants_.check(self.variants))
        arms = [arm_name(*a) for a in self.arms()]
        if self.baseline is not None and self.baseline not in arms:
            raise MgrError(f"baseline '{self.baseline}' is not an arm; arms: {', '.join(arms)}")
        for arm in self.arms():  # impossible shapes or knobs fail now, in one line
            self.model_config(arm[0], 16)
            self.train_config(arm[1], arm[2], self.lr_grid[0], self.seeds[0])
        for name in self.variants:  # a variant not in the grid is checked too: a typo shows now
            self.model_config(name, 16)

    def arms(self) -> list[tuple[str, str, str]]:
        return list(itertools.product(self.attention, self.optimizer, self.schedule))

    def baseline_arm(self) -> str:
        return self.baseline or arm_name(*self.arms()[0])

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def model_config(self, attention: str, seq_len: int, vocab_size: int = 64) -> ModelConfig:
        """The ModelConfig of grid entry `attention` (an algebra or a variant); the task fixes the
        vocabulary and the length."""
        return variants_.model_config(attention, self.model, self.variants,
                                      fixed={"vocab_size": vocab_size, "max_seq_len": seq_len})

    def gate_plan(self) -> variants_.GatePlan:
        return variants_.gate_plan(self.attention, lambda entry: self.model_config(entry, 16),
                                   self.model.get("attention_options", {}))

    def train_config(self, optimizer: str, schedule: str, lr: float, seed: int) -> TrainConfig:
        return TrainConfig(**{**self.train, "optimizer": optimizer, "schedule": schedule,
                              "learning_rate": lr, "seed": seed, "steps": None,
                              "time_limit_s": self.timeout_s, "checkpoints": False})


def arm_name(attention: str, optimizer: str, schedule: str) -> str:
    return f"{attention}-{optimizer}-{schedule}"


def run_path(arm: str, task: str, budget: float, lr: float, seed: int) -> str:
    return f"{arm}/{task}/b_{budget:.3g}/lr_{lr:g}/seed_{seed}"


def run_probe_suite(cfg: ProbeConfig, suite_dir: Path, *, on_start: Callable[[int], None] | None = None,
                    on_result: Callable[[str, dict], None] | None = None, trackers: list | None = None) -> dict:
    """Run (or resume) a probe suite; returns the suite summary written to `suite_dir/summary.json`.

    `trackers` (`mgr.train.trackers`): each finished run becomes one tracker run, logged by
    this (parent) process from its record, never by a worker."""
    from mgr.runtime import runs

    with runs.locked(suite_dir, "suite"):
        _check_same_suite(cfg, suite_dir)
        preflight(cfg)
        _write_settings(cfg, suite_dir)
        if on_start:
            k = cfg.search_seeds or len(cfg.seeds)
            per_group = len(cfg.lr_grid) * k + len(cfg.seeds) - k
            on_start(len(cfg.arms()) * len(cfg.tasks) * len(cfg.budgets) * per_group)
        from mgr.bench.probe_jobs import run_all

        from mgr.bench.tracking import for_suite

        on_result, finish = for_suite("probe", trackers, suite_dir, on_result)
        run_all(cfg, suite_dir, on_result)
        return finish(write_probe_suite(suite_dir))


def preflight(cfg: ProbeConfig) -> None:
    """Refuse a budget that gives some (arm, task) fewer than the minimum steps, before anything
    trains, naming the smallest budget that works (the counts are cached for the runs)."""
    from mgr.bench import probes
    from mgr.bench.probe_train import step_flops

    worst, where = 0.0, None
    for task in cfg.tasks:
        data = probes.get(task).make(cfg.task_options.get(task), cfg.seeds[0])
        shape = (cfg.batch_size, max(s.seq_len for s in data.train))
        for attention, optimizer, schedule in cfg.arms():
            model = cfg.model_config(attention, data.max_seq_len, data.vocab_size)
            f = step_flops(model, cfg.train_config(optimizer, schedule, cfg.lr_grid[0], 0), shape)
            if f > worst:
                worst, where = f, f"{arm_name(attention, optimizer, schedule)} on {task}"
    need = worst * cfg.train_config("adamw", "constant", 1.0, 0).min_steps
    if min(cfg.budgets) < need:
        raise MgrError(f"budget {min(cfg.budgets):.3g} gives {where} fewer than the minimum steps; the "
                       f"smallest budget that works is {need:.3g}")


def _check_same_suite(cfg: ProbeConfig, suite_dir: Path) -> None:
    """Resuming with other shared settings would mix incomparable runs; the grid may grow."""
    path = suite_dir / "probe.json"
    if path.exists():
        theirs, mine = json.loads(path.read_text()), cfg.to_dict()
        grid = ("tasks", "attention", "optimizer", "schedule", "seeds", "lr_grid", "budgets", "timeout_s",
                "workers", "search_seeds", "variants")
        diff = sorted(k for k in mine if k not in grid and theirs.get(k) != mine.get(k))
        diff += [f"variant {n}" for n in variants_.changed(theirs.get("variants"), cfg.variants)]
        if diff:
            raise MgrError(f"probe suite '{suite_dir.name}' was started with other settings "
                           f"({', '.join(diff)}); use a new --run-id")


def _write_settings(cfg: ProbeConfig, suite_dir: Path) -> None:
    from mgr.runtime.artifacts import write_json

    write_json(suite_dir / "probe.json", cfg.to_dict())


def write_probe_suite(suite_dir: Path) -> dict:
    """(Re)write a probe suite's summary.json, run.md and plots from its run records."""
    from mgr.bench.probe_report import write_probe_summary

    return write_probe_summary(Path(suite_dir))
