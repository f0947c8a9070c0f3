"""The fixed-FLOPs benchmark: every (attention, optimizer, schedule, seed) trains to one budget.

Each configuration trains until the XLA-counted FLOPs of *its own* compiled step reach the
budget, so a costlier algebra or optimizer gets fewer steps, and is scored by validation
cross-entropy on the same held-out tokens. Configurations are independent (the data, the
validation tokens and each model's initialisation depend only on the configuration and seed),
so results do not depend on the order of the arms. A failing configuration is recorded and the
sweep goes on; re-running a suite id skips finished configurations; the suite summary is
rewritten after every configuration, so a sweep killed at any moment keeps everything finished.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mgr.config import DataConfig, ModelConfig, TrainConfig
from core.errors import MgrError

FINISHED = ("ok", "diverged", "error", "timeout")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """The grid and what every configuration in it shares."""

    attention: tuple[str, ...]
    optimizer: tuple[str, ...] = ("adamw",)
    schedule: tuple[str, ...] = ("cosine",)
    seeds: tuple[int, ...] = (0,)
    target_flops: float = 4e11
    baseline: str | None = None  # arm name; default: the first arm
    model: dict[str, Any] = field(default_factory=dict)   # ModelConfig fields except attention
    data: dict[str, Any] = field(default_factory=dict)    # DataConfig fields
    train: dict[str, Any] = field(default_factory=dict)   # TrainConfig fields
    timeout_s: float | None = None

    def __post_init__(self):
        for name in ("attention", "optimizer", "schedule", "seeds"):
            if not getattr(self, name):
                raise MgrError(f"the benchmark grid needs at least one {name}")
        if self.target_flops <= 0:
            raise MgrError("--target-flops must be positive")

    def arms(self) -> list[tuple[str, str, str]]:
        return list(itertools.product(self.attention, self.optimizer, self.schedule))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    def configs(self, attention: str, optimizer: str, schedule: str, seed: int):
        data = DataConfig(**self.data)
        model = ModelConfig(**{"max_seq_len": data.seq_len, **self.model, "attention": attention,
                               "vocab_size": data.vocab_size})
        train = TrainConfig(**{**self.train, "optimizer": optimizer, "schedule": schedule, "seed": seed,
                               "steps": None, "target_flops": self.target_flops,
                               "time_limit_s": self.timeout_s, "checkpoints": False})
        return model, data, train


def arm_name(attention: str, optimizer: str, schedule: str) -> str:
    return f"{attention}-{optimizer}-{schedule}"


def load_sweep(path: Path) -> dict:
    """A TOML sweep: [grid] attention/optimizer/schedule/seeds, [budget], [model], [data], [train]."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MgrError(f"--sweep: no such file {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise MgrError(f"--sweep: {path} is not valid TOML ({e})") from None
    grid, budget = raw.get("grid", {}), raw.get("budget", {})
    out = {k: tuple(v) for k, v in grid.items() if k in ("attention", "optimizer", "schedule", "seeds")}
    out.update({k: budget[k] for k in ("target_flops", "timeout_s", "baseline") if k in budget})
    for section in ("model", "data", "train"):
        if section in raw:
            out[section] = dict(raw[section])
    unknown = set(raw) - {"grid", "budget", "model", "data", "train", "description"}
    if unknown:
        raise MgrError(f"--sweep: unknown sections {sorted(unknown)} in {path}")
    return out


def preflight(cfg: BenchConfig) -> None:
    """Refuse a budget too small for the minimum steps, or a --devices the batch or host cannot
    honour, before anything trains.

    Counts each arm's step without compiling it (`mgr.train.step_flops`): the same count each
    run then uses for its own steps.
    """
    from mgr.train import check_devices, step_flops

    train_cfg = TrainConfig(**cfg.train)
    check_devices(train_cfg.devices, DataConfig(**cfg.data).batch_size)  # one line, not one error per arm
    worst = 0.0
    for arm in cfg.arms():
        model, data, train = cfg.configs(*arm, cfg.seeds[0])
        worst = max(worst, step_flops(model, train, (data.batch_size, data.seq_len + 1)))
    min_steps = train_cfg.min_steps
    if cfg.target_flops < worst * min_steps:
        raise MgrError(f"--target-flops {cfg.target_flops:.3g} gives the costliest arm fewer than "
                       f"{min_steps} steps; the smallest budget that works is {worst * min_steps:.3g}")


def run_bench(cfg: BenchConfig, suite_dir: Path, artifacts_root: Path, *,
              on_start: Callable[[], None] | None = None,
              on_result: Callable[[dict], None] | None = None, data=None) -> dict:
    """Run (or resume) a suite; returns the suite summary written to `suite_dir/summary.json`.

    `on_start` is called once the suite is locked and its settings and budget are accepted.
    """
    from mgr.data import build_data
    from mgr.runtime import runs

    with runs.locked(suite_dir, "suite"):  # a second process on this suite id is refused
        _check_same_suite(cfg, suite_dir)
        preflight(cfg)
        _write_settings(cfg, suite_dir)  # only once the budget is known to work
        if on_start:
            on_start()
        data = build_data(DataConfig(**cfg.data)) if data is None else data
        return _run_arms(cfg, suite_dir, artifacts_root, on_result, data)


def _run_arms(cfg: BenchConfig, suite_dir: Path, artifacts_root: Path, on_result, data) -> dict:
    from mgr.bench.report import write_suite
    from mgr.train import train

    for attention, optimizer, schedule in cfg.arms():
        for seed in cfg.seeds:
            run_dir = suite_dir / arm_name(attention, optimizer, schedule) / f"seed_{seed}"
            done = _finished(run_dir)
            if done is None:
                if run_dir.exists():  # a configuration cut short by a kill: start it again
                    shutil.rmtree(run_dir)
                model, dcfg, tcfg = cfg.configs(attention, optimizer, schedule, seed)
                try:
                    done = train(model, dcfg, tcfg, run_dir=run_dir, artifacts_root=artifacts_root, data=data)
                except MgrError as e:  # e.g. this arm's own budget check: record it, go on
                    done = _error_record(run_dir, str(e))
                except Exception as e:  # noqa: BLE001 - one broken configuration never stops a sweep
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    done = _error_record(run_dir, f"{type(e).__name__}: {first}")
            write_suite(suite_dir, cfg.to_dict())
            if on_result:
                on_result(done)
    return write_suite(suite_dir, cfg.to_dict())


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if summary.get("status") in FINISHED else None


def _error_record(run_dir: Path, message: str) -> dict:
    from mgr.runtime import artifacts

    summary = {"schema_version": artifacts.SCHEMA_VERSION, "meta": artifacts.provenance(run_dir.name),
               "config": {}, "budget": {}, "results": {}, "status": "error", "reason": message}
    artifacts.write_json(run_dir / "summary.json", summary)
    return summary


def _check_same_suite(cfg: BenchConfig, suite_dir: Path) -> None:
    """Resuming a suite id with a different grid or budget would mix incomparable runs."""
    path = suite_dir / "bench.json"
    mine = cfg.to_dict()
    if path.exists():
        theirs = json.loads(path.read_text())
        shared = {k for k in mine if k not in ("attention", "optimizer", "schedule", "seeds", "timeout_s")}
        diff = sorted(k for k in shared if theirs.get(k) != mine.get(k))
        if diff:
            raise MgrError(f"suite '{suite_dir.name}' was started with other settings ({', '.join(diff)});"
                           " use a new --run-id")


def _write_settings(cfg: BenchConfig, suite_dir: Path) -> None:
    from mgr.runtime.artifacts import write_json

    write_json(suite_dir / "bench.json", cfg.to_dict())
