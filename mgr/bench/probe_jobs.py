"""Running a probe suite's runs: jobs (every missing seed of one arm, task, budget and rate),
the two-stage learning-rate search, in this process or in worker processes."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from core.errors import MgrError
from mgr.bench import variants as variants_
from mgr.bench.probe_suite import RUN_SCHEMA, ProbeConfig, arm_name, run_path, write_probe_suite


def run_all(cfg: ProbeConfig, suite_dir: Path, on_result) -> None:
    """Report finished runs, then run the rest as jobs: one job is every missing seed of one
    (arm, task, budget, learning rate), so a job compiles its train step once. With
    `search_seeds`, the search seeds run first at every rate; then the other seeds at the rate
    each (arm, task, budget) chose, the longest jobs first."""
    import contextlib

    from mgr.bench.suite import gate_once

    plan = cfg.gate_plan()  # every distinct algebra of every entry (variants included), once
    workers = None
    with contextlib.ExitStack() as stack:
        if cfg.workers > 1:
            from mgr.bench.probe_pool import Workers

            workers = stack.enter_context(Workers(cfg, cfg.workers))
        checked = _pool_gates(workers, plan) if workers and cfg.gate else {}
        gates = {label: gate_once(suite_dir, name, options, enabled=cfg.gate, result=checked.get(label),
                                  label=label, used_by=plan.users(label))
                 for label, (name, options) in plan.checks.items()}
        k = cfg.search_seeds or len(cfg.seeds)
        groups = [(arm, task, budget) for arm in cfg.arms() if not plan.failed(arm[0], gates)
                  for task, budget in itertools.product(cfg.tasks, cfg.budgets)]
        _execute(cfg, suite_dir, [(*arm, task, budget, lr, cfg.seeds[:k]) for arm, task, budget in groups
                                  for lr in cfg.lr_grid], on_result, workers)
        if k < len(cfg.seeds):
            second = [(*arm, task, budget, _chosen_lr(cfg, suite_dir, arm, task, budget, k), cfg.seeds[k:])
                      for arm, task, budget in groups]
            second.sort(key=lambda job: -_seconds(suite_dir, job, cfg.seeds[0]))
            _execute(cfg, suite_dir, second, on_result, workers)


def _pool_gates(workers, plan) -> dict[str, dict]:
    """Every planned gate checked in the worker pool. The pool takes one options set per
    algebra name, so an algebra that variants use with several options sets takes a round each."""
    rounds: list[dict[str, str]] = []  # per round: algebra -> label
    for label, (name, _) in plan.checks.items():
        free = next((r for r in rounds if name not in r), None)
        if free is None:
            rounds.append(free := {})
        free[name] = label
    out = {}
    for r in rounds:
        got = workers.gates(list(r), {name: plan.checks[label][1] for name, label in r.items()})
        out.update({r[name]: result for name, result in got.items()})
    return out


def _seconds(suite_dir: Path, job: tuple, seed: int) -> float:
    """How long the search seed's run of this job took (to start long jobs first)."""
    from mgr.bench.suite import finished_record

    attention, optimizer, schedule, task, budget, lr, _ = job
    rec = finished_record(suite_dir / run_path(arm_name(attention, optimizer, schedule), task, budget, lr, seed))
    return float(((rec or {}).get("results") or {}).get("train_seconds") or 0.0)


def _chosen_lr(cfg: ProbeConfig, suite_dir: Path, arm, task, budget, k) -> float:
    """The rate with the best mean tuning accuracy over the search seeds (the smallest on ties)."""
    from mgr.bench.suite import finished_record

    best, best_acc = min(cfg.lr_grid), -1.0
    for lr in sorted(cfg.lr_grid):  # the order evidence.build breaks ties in
        accs = [((finished_record(suite_dir / run_path(arm_name(*arm), task, budget, lr, s)) or {})
                 .get("results") or {}).get("tune_accuracy") for s in cfg.seeds[:k]]
        accs = [a for a in accs if a is not None]
        if accs and sum(accs) / len(accs) > best_acc:
            best, best_acc = lr, sum(accs) / len(accs)
    return best


def _execute(cfg: ProbeConfig, suite_dir: Path, wanted: list[tuple], on_result, workers=None) -> None:
    """Run the missing seeds of each wanted job (reporting the finished ones)."""
    from mgr.bench.suite import finished_record

    jobs = []
    for *head, seeds in wanted:
        attention, optimizer, schedule, task, budget, lr = head
        todo = []
        for seed in seeds:
            rel = run_path(arm_name(attention, optimizer, schedule), task, budget, lr, seed)
            done = finished_record(suite_dir / rel)
            if done is None:
                todo.append(seed)
            elif on_result:
                on_result(rel, done)
        if todo:
            jobs.append((*head, tuple(todo)))
    if workers is not None:
        finished = workers.run(suite_dir, jobs)
    else:
        finished = (run_job(cfg, job, suite_dir) for job in jobs)
    for results in finished:
        write_probe_suite(suite_dir)
        for rel, rec in results:
            if on_result:
                on_result(rel, rec)


_DATA: dict[tuple, Any] = {}


def run_job(cfg: ProbeConfig, job: tuple, suite_dir: Path, *, regate: bool = False) -> list[tuple[str, dict]]:
    """Train the seeds of one job and write their records; returns (relative path, record) pairs.

    `regate`: check the algebra in this process first (a worker process runs it, so that the
    numbers it scores come from a process in which the algebra passed its gate).
    """
    from mgr.bench import probe_report, probes
    from mgr.runtime import artifacts

    attention, optimizer, schedule, task, budget, lr, seeds = job
    arm = arm_name(attention, optimizer, schedule)
    gate = None
    if regate and cfg.gate:
        from mgr.bench.gate import check_algebra

        # Every algebra the entry's layers use; the first that fails stands for the entry.
        checked = [check_algebra(name, options)
                   for name, options in variants_.algebras(cfg.model_config(attention, 16))]
        gate = next((g for g in checked if not g["passed"]), checked[0])
    out = []
    for seed in seeds:
        rel = run_path(arm, task, budget, lr, seed)
        run_dir = suite_dir / rel
        if run_dir.exists():  # cut short by a kill: start it again
            shutil.rmtree(run_dir)
        key = (task, json.dumps(cfg.task_options.get(task), sort_keys=True), seed)
        if key not in _DATA:
            _DATA[key] = probes.get(task).make(cfg.task_options.get(task), seed)
        if gate is not None and not gate["passed"]:
            done = {"schema_version": RUN_SCHEMA, "meta": artifacts.provenance(run_dir.name), "config": {},
                    "budget": {"target_flops": budget}, "results": {}, "status": "error",
                    "reason": f"correctness gate failed in the worker: {gate['reason']}"}
        else:
            done = _one_run(cfg, (attention, optimizer, schedule), task, budget, lr, seed, _DATA[key], run_dir)
        artifacts.write_json(run_dir / "summary.json", done)
        artifacts.atomic_write(run_dir / "run.md", probe_report.render_run_md(done))
        out.append((rel, done))
    return out


def _one_run(cfg: ProbeConfig, arm: tuple[str, str, str], task: str, budget: float, lr: float,
             seed: int, data, run_dir: Path) -> dict:
    from mgr.bench.probe_train import run_probe, state_bytes
    from mgr.runtime import artifacts

    attention, optimizer, schedule = arm
    record: dict[str, Any] = {"schema_version": RUN_SCHEMA, "meta": artifacts.provenance(run_dir.name),
                              "config": {}, "budget": {"target_flops": budget}, "results": {}}
    try:
        model = cfg.model_config(attention, data.max_seq_len, data.vocab_size)
        train = cfg.train_config(optimizer, schedule, lr, seed)
        record["config"] = {"model": model.to_dict(), "train": train.to_dict(), "task": task,
                            "task_options": probes_options(cfg, task), "batch_size": cfg.batch_size,
                            "variant": attention if attention in cfg.variants else None}
        out = run_probe(model, train, data, batch_size=cfg.batch_size, budget=budget)
        record.update(budget=out["budget"], results=out["results"], status=out["status"], reason=out["reason"])
        record["results"]["state_bytes"] = state_bytes(model)
    except MgrError as e:  # this run's own budget check: recorded, the sweep goes on
        record.update(status="error", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one broken configuration never stops a sweep
        first = (str(e).strip().splitlines() or [""])[0][:300]
        record.update(status="error", reason=f"{type(e).__name__}: {first}")
    return record


def probes_options(cfg: ProbeConfig, task: str) -> dict:
    from mgr.bench import probes

    return probes.get(task).config(cfg.task_options.get(task)).to_dict()
