"""The fixed-FLOPs benchmark: every (attention, optimizer, schedule, seed) trains to one budget.

An `attention` entry of the grid is a registered algebra or a named model variant
(`mgr.bench.variants`: ModelConfig overrides such as a hybrid layer pattern), so an arm may be
a whole model configuration.

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
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mgr.bench import variants as variants_
from mgr.config import DataConfig, TrainConfig
from core.errors import MgrError

FINISHED = ("ok", "diverged", "error", "timeout")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """The grid and what every configuration in it shares."""

    attention: tuple[str, ...]  # registered algebra names or names of `variants`
    optimizer: tuple[str, ...] = ("adamw",)
    schedule: tuple[str, ...] = ("cosine",)
    seeds: tuple[int, ...] = (0,)
    target_flops: float = 4e11
    baseline: str | None = None  # arm name; default: the first arm
    model: dict[str, Any] = field(default_factory=dict)   # ModelConfig fields except attention
    data: dict[str, Any] = field(default_factory=dict)    # DataConfig fields
    train: dict[str, Any] = field(default_factory=dict)   # TrainConfig fields
    timeout_s: float | None = None
    # The fair protocol: a learning-rate grid per arm (empty: the train section's one rate),
    # chosen on the tuning half of the validation tokens and reported on the other half; several
    # budgets (empty: `target_flops` alone); the correctness gate before an algebra trains.
    lr_grid: tuple[float, ...] = ()
    budgets: tuple[float, ...] = ()
    gate: bool = True
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> ModelConfig overrides

    def __post_init__(self):
        for name in ("attention", "optimizer", "schedule", "seeds"):
            if not getattr(self, name):
                raise MgrError(f"the benchmark grid needs at least one {name}")
        object.__setattr__(self, "variants", variants_.check(self.variants))
        for entry in dict.fromkeys((*self.attention, *self.variants)):  # a bad variant: one line, now
            self.model_config(entry)
        if self.target_flops <= 0 or any(b <= 0 for b in self.budgets):
            raise MgrError("--target-flops and --budgets must be positive")
        if any(lr <= 0 for lr in self.lr_grid):
            raise MgrError("--lr-grid values must be positive")
        if len(set(self.lr_grid)) != len(self.lr_grid) or len(set(self.budgets)) != len(self.budgets):
            raise MgrError("--lr-grid and --budgets must not repeat a value")

    def learning_rates(self) -> tuple[float, ...]:
        return self.lr_grid or (float(self.train.get("learning_rate", TrainConfig.learning_rate)),)

    def budget_list(self) -> tuple[float, ...]:
        return self.budgets or (self.target_flops,)

    def arms(self) -> list[tuple[str, str, str]]:
        return list(itertools.product(self.attention, self.optimizer, self.schedule))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    def model_config(self, attention: str):
        """The ModelConfig of grid entry `attention` (an algebra or a variant): the data fixes the
        vocabulary, and its sequence length is the default context."""
        data = DataConfig(**self.data)
        return variants_.model_config(attention, self.model, self.variants, defaults={"max_seq_len": data.seq_len},
                                      fixed={"vocab_size": data.vocab_size})

    def gate_plan(self) -> variants_.GatePlan:
        return variants_.gate_plan(self.attention, self.model_config, self.model.get("attention_options", {}))

    def configs(self, attention: str, optimizer: str, schedule: str, seed: int,
                lr: float | None = None, budget: float | None = None):
        data = DataConfig(**self.data)
        model = self.model_config(attention)
        train = TrainConfig(**{**self.train, "optimizer": optimizer, "schedule": schedule, "seed": seed,
                               "steps": None, "target_flops": budget or self.budget_list()[0],
                               "learning_rate": lr or self.learning_rates()[0],
                               "time_limit_s": self.timeout_s, "checkpoints": False})
        return model, data, train

    def runs(self):
        """(attention, optimizer, schedule, budget, lr, seed) in the order they train: an arm's
        runs together, so its compiled programs are reused across seeds."""
        for arm in self.arms():
            for budget, lr, seed in itertools.product(self.budget_list(), self.learning_rates(), self.seeds):
                yield (*arm, budget, lr, seed)


def arm_name(attention: str, optimizer: str, schedule: str) -> str:
    return f"{attention}-{optimizer}-{schedule}"


def run_path(attention: str, optimizer: str, schedule: str, budget: float, lr: float, seed: int) -> str:
    """A configuration's directory inside its suite (the report reads these back)."""
    return f"{arm_name(attention, optimizer, schedule)}/b_{budget:.3g}/lr_{lr:g}/seed_{seed}"


def read_toml(path: Path, sections: tuple[str, ...]) -> dict:
    """A sweep file's tables; an unreadable file or an unknown section is one line."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MgrError(f"--sweep: no such file {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise MgrError(f"--sweep: {path} is not valid TOML ({e})") from None
    unknown = set(raw) - {*sections, "description"}
    if unknown:
        raise MgrError(f"--sweep: unknown sections {sorted(unknown)} in {path}")
    return raw


def load_sweep(path: Path) -> dict:
    """A TOML sweep: [grid] attention/optimizer/schedule/seeds, [budget], [model], [data], [train],
    [variants.NAME] (ModelConfig overrides; a grid attention entry may name one)."""
    raw = read_toml(path, ("grid", "budget", "model", "data", "train", "variants"))
    grid, budget = raw.get("grid", {}), raw.get("budget", {})
    out = {k: tuple(v) for k, v in grid.items() if k in ("attention", "optimizer", "schedule", "seeds")}
    out.update({k: budget[k] for k in ("target_flops", "timeout_s", "baseline") if k in budget})
    out.update({k: tuple(budget[k]) for k in ("lr_grid", "budgets") if k in budget})
    for section in ("model", "data", "train", "variants"):
        if section in raw:
            out[section] = dict(raw[section])
    return out


def preflight(cfg: BenchConfig, skip: tuple[str, ...] = ()) -> None:
    """Refuse a budget too small for the minimum steps, or a --devices the batch or host cannot
    honour, before anything trains.

    Counts each arm's step without compiling it (`mgr.train.step_flops`): the same count each
    run then uses for its own steps. Arms of the entries in `skip` (gated out: they never
    train) are not counted.
    """
    from mgr.train import check_layout, step_flops

    train_cfg = TrainConfig(**cfg.train)
    check_layout(train_cfg.layout, DataConfig(**cfg.data).batch_size)  # one line, not one error per arm
    worst = 0.0
    for arm in cfg.arms():
        if arm[0] in skip:
            continue
        model, data, train = cfg.configs(*arm, cfg.seeds[0])
        worst = max(worst, step_flops(model, train, (data.batch_size, data.seq_len + 1)))
    min_steps = train_cfg.min_steps
    smallest = min(cfg.budget_list())
    if smallest < worst * min_steps:
        raise MgrError(f"budget {smallest:.3g} gives the costliest arm fewer than "
                       f"{min_steps} steps; the smallest budget that works is {worst * min_steps:.3g}")


def run_bench(cfg: BenchConfig, suite_dir: Path, artifacts_root: Path, *,
              on_start: Callable[[], None] | None = None,
              on_result: Callable[[str, dict], None] | None = None, data=None,
              trackers: list | None = None) -> dict:
    """Run (or resume) a suite; returns the suite summary written to `suite_dir/summary.json`.

    `on_start` is called once the suite is locked and its settings and budget are accepted;
    `on_result(path in the suite, record)` after each configuration. `trackers`
    (`mgr.train.trackers`, experiment `mgr.bench.tracking.experiment_name`): each finished
    configuration becomes one tracker run, logged here in the parent process.
    """
    from mgr.data import build_data
    from mgr.runtime import runs

    with runs.locked(suite_dir, "suite"):  # a second process on this suite id is refused
        _check_same_suite(cfg, suite_dir)
        # Gates first: an entry that will not train must not decide whether the budget works.
        plan, gates = check_gates(cfg, suite_dir)
        preflight(cfg, skip=tuple(e for e in cfg.attention if plan.failed(e, gates)))
        _write_settings(cfg, suite_dir)  # only once the budget is known to work
        if on_start:
            on_start()
        data = build_data(DataConfig(**cfg.data)) if data is None else data
        from mgr.bench.tracking import for_suite

        on_result, finish = for_suite("fixed_flops", trackers, suite_dir, on_result)
        return finish(_run_arms(cfg, suite_dir, artifacts_root, on_result, data, plan, gates))


def _run_arms(cfg: BenchConfig, suite_dir: Path, artifacts_root: Path, on_result, data, plan, gates) -> dict:
    from mgr.bench.report import session_record, write_suite
    from mgr.runtime import distributed
    from mgr.runtime.artifacts import write_json
    from mgr.train import train

    # Under several processes (`mgr launch`) every process runs every configuration here, in
    # this order, together: the arms run in-process, never in worker pools that would each try
    # to join the job. Process 0 alone writes (records, the figure) and removes.

    t0, trained, n_trained = time.perf_counter(), 0.0, 0
    for attention, optimizer, schedule, budget, lr, seed in cfg.runs():
        rel = run_path(attention, optimizer, schedule, budget, lr, seed)
        run_dir = suite_dir / rel
        done = finished_record(run_dir)
        if done is None and plan.failed(attention, gates):
            continue  # an entry using a gated-out algebra trains nothing; the suite record says why
        if done is None:
            if run_dir.exists() and distributed.is_primary():  # cut short by a kill: start it again
                shutil.rmtree(run_dir)
            model, dcfg, tcfg = cfg.configs(attention, optimizer, schedule, seed, lr, budget)
            try:
                done = train(model, dcfg, tcfg, run_dir=run_dir, artifacts_root=artifacts_root, data=data)
            except MgrError as e:  # e.g. this arm's own budget check: record it, go on
                done = _error_record(run_dir, str(e))
            except Exception as e:  # noqa: BLE001 - one broken configuration never stops a sweep
                first = (str(e).strip().splitlines() or [""])[0][:300]
                done = _error_record(run_dir, f"{type(e).__name__}: {first}")
            trained += float((done.get("results") or {}).get("train_seconds") or 0.0)
            n_trained += 1
        write_suite(suite_dir, cfg.to_dict(), plot=False)
        if on_result:
            on_result(rel, done)
    # How much of this session went into train steps (the rest: data, compiling, FLOP counting,
    # evaluation, checkpoints, records): the share the harness is judged on.
    wall = time.perf_counter() - t0
    write_suite(suite_dir, cfg.to_dict())  # the figure: inside the process's window
    write_json(suite_dir / "session.json", session_record(wall, trained, n_trained))
    return write_suite(suite_dir, cfg.to_dict(), plot=False)


def check_gates(cfg: BenchConfig, suite_dir: Path) -> tuple[variants_.GatePlan, dict[str, dict]]:
    """Every distinct algebra (with its options) that any grid entry's layers use, gated once
    and recorded; an entry runs only if `plan.failed(entry, gates)` is empty."""
    plan = cfg.gate_plan()
    gates = {label: gate_once(suite_dir, name, options, enabled=cfg.gate, label=label, used_by=plan.users(label))
             for label, (name, options) in plan.checks.items()}
    return plan, gates


def finished_record(run_dir: Path) -> dict | None:
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
        grid = ("attention", "optimizer", "schedule", "seeds", "timeout_s", "lr_grid", "budgets", "variants")
        shared = {k for k in mine if k not in grid}
        diff = sorted(k for k in shared if theirs.get(k) != mine.get(k))
        diff += [f"variant {n}" for n in variants_.changed(theirs.get("variants"), cfg.variants)]
        if diff:
            raise MgrError(f"suite '{suite_dir.name}' was started with other settings ({', '.join(diff)});"
                           " use a new --run-id")


def gate_once(suite_dir: Path, attention: str, options: dict | None, *, enabled: bool,
              result: dict | None = None, label: str | None = None, used_by: list[str] | None = None) -> dict:
    """The algebra's correctness gate, checked in this process (once per process: a resumed
    suite checks again rather than trusting an old record) and recorded in `gates/<label>.json`
    (`label`: the algebra's name unless a variant gives it other options), with the grid entries
    that need it (`used_by`). `result`: the gate as a worker process checked it (the worker
    that trains the algebra checks it again itself)."""
    from mgr.runtime.artifacts import write_json

    if result is not None:
        pass
    elif enabled:
        from mgr.bench.gate import check_algebra

        result = check_algebra(attention, options)
    else:
        result = {"algebra": attention, "passed": True, "reason": "gate disabled", "checks": {}}
    if used_by is not None:
        result = {**result, "used_by": list(used_by)}
    write_json(suite_dir / "gates" / f"{label or attention}.json", result)
    return result


def _write_settings(cfg: BenchConfig, suite_dir: Path) -> None:
    from mgr.runtime.artifacts import write_json

    write_json(suite_dir / "bench.json", cfg.to_dict())
