"""The fixed-FLOPs harness: budgets, records, resume, failures, order, `report` and `compare`."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mgr.train
from mgr.bench import BenchConfig, run_bench
from mgr.cli import app
from mgr.config import TrainConfig
from mgr.data import build_data
from core.errors import MgrError
from mgr.bench.report import render_suite_md
from mgr.train import plan_steps

from helpers import TINY_DATA

runner = CliRunner()
MODEL = {"n_layers": 1, "d_model": 32, "n_heads": 4, "n_kv_heads": 2}
TRAIN = {"learning_rate": 1e-2, "warmup_steps": 2, "eval_every": 5, "min_steps": 5}


def bench(**kw) -> BenchConfig:
    base = dict(attention=("standard",), seeds=(0,), target_flops=8e8, model=MODEL,
                data=TINY_DATA.to_dict(), train=TRAIN)
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def data():
    return build_data(TINY_DATA)


def test_budget_arithmetic():
    cfg = TrainConfig(steps=None, target_flops=1000.0, min_steps=10)
    assert plan_steps(cfg, 99.0) == 10
    assert plan_steps(cfg, 100.0) == 10
    with pytest.raises(MgrError, match="smallest budget that works is 1.01e\\+03"):
        plan_steps(cfg, 101.0)
    assert plan_steps(TrainConfig(steps=7), 1e9) == 7


def test_suite_records_budget_resume_and_report(tmp_path, data):
    other = "reversible"  # half-width layers: a clearly different step cost from standard's
    cfg = bench(attention=("standard", other), seeds=(0, 1))
    suite = tmp_path / "bench" / "fixed_flops" / "s1"
    summary = run_bench(cfg, suite, tmp_path, data=data)
    assert summary["schema_version"] == "mgr.bench.fixed_flops.v1"
    arms = {a["arm"]: a for a in summary["arms"]}
    assert set(arms) == {"standard-adamw-cosine", f"{other}-adamw-cosine"}
    flops = {}
    for name, arm in arms.items():
        assert arm["statuses"] == {"ok": 2}
        assert arm["val_ce"]["n"] == 2 and arm["val_ce"]["ci95"] > 0
        for r in arm["runs"]:
            run = json.loads((suite / r["path"]).read_text())
            assert run["schema_version"] == "mgr.train.v1" and run["status"] == "ok"
            assert run["budget"]["steps"] == int(cfg.target_flops // run["budget"]["flops_per_step_xla"])
            assert run["results"]["val_tokens"] == TINY_DATA.val_tokens
            flops[name] = run["budget"]["flops_per_step_xla"]
    # the costlier algebra gets fewer steps at the same budget
    assert flops[f"{other}-adamw-cosine"] != flops["standard-adamw-cosine"]
    steps = {n: a["steps"] for n, a in arms.items()}
    assert flops[f"{other}-adamw-cosine"] < 0.9 * flops["standard-adamw-cosine"]
    assert steps[f"{other}-adamw-cosine"] > steps["standard-adamw-cosine"]
    delta = arms[f"{other}-adamw-cosine"]["delta_vs_baseline"]
    # the session's share in train steps, over the runs' loop and over the process from its start
    session = summary["session"]
    assert session["runs_trained"] == 4
    assert session["train_seconds"] == pytest.approx(sum(
        json.loads((suite / r["path"]).read_text())["results"]["train_seconds"]
        for a in arms.values() for r in a["runs"]), abs=1e-2)
    assert 0 < session["train_seconds"] < session["wall_seconds"] < session["process_seconds"]
    assert session["process_seconds"] == pytest.approx(_process_age(), abs=2.0)
    assert session["train_share"] == pytest.approx(session["train_seconds"] / session["wall_seconds"], abs=1e-3)
    assert session["process_train_share"] == pytest.approx(
        session["train_seconds"] / session["process_seconds"], abs=1e-3)
    md = (suite / "run.md").read_text()
    assert (f"{session['train_share']:.0%} of the {session['wall_seconds']:.1f} s of the runs' loop" in md
            and f"{session['process_train_share']:.0%} of the process's {session['process_seconds']:.1f} s" in md)
    assert delta["welch"]["p_value"] is not None and summary["conclusions"]["best_arm"] in arms
    # run.md and the plot regenerate from the records alone
    (suite / "run.md").unlink()
    (suite / "curves.png").unlink()
    result = runner.invoke(app, ["report", str(suite)])
    assert result.exit_code == 0, result.output
    regenerated = json.loads((suite / "summary.json").read_text())
    assert (suite / "run.md").read_text() == render_suite_md(regenerated)
    assert (suite / "curves.png").stat().st_size > 5000
    # resume: nothing is retrained
    stamps = {p: p.stat().st_mtime_ns for p in suite.glob("*/b_*/lr_*/seed_*/summary.json")}
    again = run_bench(cfg, suite, tmp_path, data=data)
    assert {p: p.stat().st_mtime_ns for p in suite.glob("*/b_*/lr_*/seed_*/summary.json")} == stamps
    assert [a["val_ce"] for a in again["arms"]] == [a["val_ce"] for a in summary["arms"]]
    # compare: a suite against itself passes; a worse candidate is a regression
    assert runner.invoke(app, ["compare", str(suite), str(suite)]).exit_code == 0
    worse = json.loads((suite / "summary.json").read_text())
    worse["arms"][0]["val_ce"]["mean"] += 0.2
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    result = runner.invoke(app, ["compare", str(suite), str(tmp_path / "worse.json")])
    assert result.exit_code == 1 and "regression" in result.stdout
    assert runner.invoke(app, ["compare", str(suite), str(tmp_path / "nope")]).exit_code == 2


def _process_age() -> float:
    psutil = pytest.importorskip("psutil")  # an independent clock for the record's process window
    import time

    return time.time() - psutil.Process().create_time()


def test_lr_grid_and_budgets_choose_on_the_tuning_half_and_fit_a_curve(tmp_path, data):
    cfg = bench(lr_grid=(1e-2, 2e-3), budgets=(8e8, 1.6e9))
    suite = tmp_path / "grid"
    summary = run_bench(cfg, suite, tmp_path, data=data)
    recs = {str(p.relative_to(suite)): json.loads(p.read_text())
            for p in suite.glob("*/b_*/lr_*/seed_*/summary.json")}
    assert len(recs) == 4
    for rec in recs.values():
        res = rec["results"]
        # the two halves of the validation tokens: disjoint batches, so different numbers, whose
        # mean is the whole set's CE (equal halves)
        assert res["val_ce_tune_final"] != res["val_ce_report_final"]
        assert (res["val_ce_tune_final"] + res["val_ce_report_final"]) / 2 == pytest.approx(res["val_ce_final"])
    rows = summary["evidence"]["rows"]
    assert sorted(r["budget"] for r in rows) == [8e8, 1.6e9]
    for row in rows:
        at = {k: r for k, r in recs.items() if r["budget"]["target_flops"] == row["budget"]}
        tune = {r["config"]["train"]["learning_rate"]: r["results"]["val_ce_tune_final"] for r in at.values()}
        assert row["best_lr"] == min(tune, key=tune.get)  # lower CE is better, on the tuning half only
        (chosen,) = [r for r in at.values() if r["config"]["train"]["learning_rate"] == row["best_lr"]]
        assert row["score"]["mean"] == chosen["results"]["val_ce_report_final"]
        assert row["sensitivity"] == pytest.approx(abs(tune[1e-2] - tune[2e-3]))
    (fit,) = summary["evidence"]["fits"]
    assert fit["arm"] == "standard-adamw-cosine" and len(fit["points"]) == 2
    (arm,) = summary["arms"]
    assert arm["budget"] == 1.6e9 and arm["best_lr"] in (1e-2, 2e-3)
    assert summary["evidence"]["gates"]["standard"]["passed"]


def test_failing_configuration_is_recorded_and_the_suite_goes_on(tmp_path, data, monkeypatch):
    real = mgr.train.train

    def flaky(model_cfg, data_cfg, train_cfg, **kw):
        if train_cfg.seed == 1:
            raise RuntimeError("injected failure")
        return real(model_cfg, data_cfg, train_cfg, **kw)

    monkeypatch.setattr(mgr.train, "train", flaky)
    suite = tmp_path / "s2"
    summary = run_bench(bench(seeds=(1, 0)), suite, tmp_path, data=data)
    (arm,) = summary["arms"]
    assert arm["statuses"] == {"ok": 1, "error": 1}
    failed = next(r for r in arm["runs"] if r["seed"] == 1)
    assert "injected failure" in failed["reason"]
    assert "arms with failed runs" in " ".join(summary["conclusions"]["text"])


def test_results_do_not_depend_on_arm_order(tmp_path, data):
    a = run_bench(bench(attention=("standard",), optimizer=("adamw",), schedule=("cosine", "constant")),
                  tmp_path / "ab", tmp_path, data=data)
    b = run_bench(bench(attention=("standard",), optimizer=("adamw",), schedule=("constant", "cosine")),
                  tmp_path / "ba", tmp_path, data=data)
    va = {x["arm"]: x["val_ce"]["mean"] for x in a["arms"]}
    vb = {x["arm"]: x["val_ce"]["mean"] for x in b["arms"]}
    assert va == vb and len(va) == 2


def test_too_small_budget_is_refused_with_the_smallest_that_works(tmp_path, data):
    with pytest.raises(MgrError, match="smallest budget that works"):
        run_bench(bench(target_flops=1e6), tmp_path / "s3", tmp_path, data=data)


# Two simulated devices against one (the batch sharded over a data mesh): checked, with two
# processes of one job beside them, for two algebras over 12 steps within 1e-6 by
# tests/test_multiprocess.py::test_two_processes_match_two_devices_and_one_device.


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_sweeps_name_only_registered_things(path):
    import attention
    import optim
    from mgr.bench.probe_runner import merge as probe_merge
    from mgr.bench.runner import merge

    _skip_until_the_ffn_registry_lands(path)
    if path.name.endswith("_probe.toml"):  # `mgr probe --sweep` files; the rest are benchmark sweeps
        cfg = probe_merge({}, path)
        assert cfg.budgets and len(cfg.seeds) >= 2 and cfg.tasks
    else:
        cfg = merge({}, path)
        assert cfg.target_flops > 0 and len(cfg.seeds) >= 2
    for name in cfg.attention:  # a variant's model was validated when the config was built
        assert name in cfg.variants or attention.get(name)
    for name in cfg.optimizer:
        optim.get(name)
    for name in cfg.schedule:
        optim.get_schedule(name)


def _skip_until_the_ffn_registry_lands(path):
    """experiments/peers*.toml name feed-forward kinds (ModelConfig.ffn), which land with the
    ffn registry; until `ffn.names` exists they are skipped, afterwards they must load."""
    import dataclasses
    import tomllib

    import ffn
    from mgr.config import ModelConfig

    wanted = {k for v in tomllib.loads(path.read_text()).get("variants", {}).values() for k in v}
    missing = wanted - {f.name for f in dataclasses.fields(ModelConfig)}
    if missing and missing <= {"ffn", "ffn_options"} and not hasattr(ffn, "names"):
        pytest.skip(f"{path.name} needs ModelConfig.{', '.join(sorted(missing))} from the ffn registry")
