"""`mgr probe`: equal-FLOPs runs on probe tasks, learning rates chosen on the tuning slice only,
resume, the correctness gate, decoding-state sizes, and the evidence behind the tables."""

import json

import pytest
from typer.testing import CliRunner

from mgr.bench import evidence
from mgr.bench.probe_suite import ProbeConfig, run_probe_suite
from mgr.bench.probe_train import state_bytes
from mgr.cli import app
from mgr.config import ModelConfig
from core.errors import MgrError

runner = CliRunner()
TINY = dict(tasks=("mqar",), task_options={"mqar": {"settings": [[16, 2]], "n_train": 256, "n_test": 64}},
            attention=("standard", "fractal"), seeds=(0, 1), lr_grid=(3e-3, 3e-2), budgets=(4e8,),
            model={"n_layers": 1, "d_model": 32, "n_heads": 4, "n_kv_heads": 2}, batch_size=16,
            train={"warmup_steps": 2, "min_steps": 5})


def _records(suite):
    return {str(p.relative_to(suite)): json.loads(p.read_text())
            for p in suite.glob("*/*/b_*/lr_*/seed_*/summary.json")}


def test_suite_chooses_lr_on_tune_reports_test_and_resumes(tmp_path):
    suite = tmp_path / "probe" / "p1"
    summary = run_probe_suite(ProbeConfig(**TINY), suite)
    assert summary["kind"] == "probe" and summary["runs_finished"] == 2 * 2 * 2
    recs = _records(suite)
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs.values())
    rows = {r["arm"]: r for r in summary["evidence"]["rows"]}
    assert set(rows) == {"standard-adamw-cosine", "fractal-adamw-cosine"}
    for arm, row in rows.items():
        # the chosen rate is the one with the best mean *tuning* accuracy, read back from the records
        tune = {lr: [r["results"]["tune_accuracy"] for k, r in recs.items() if k.startswith(f"{arm}/")
                     and r["config"]["train"]["learning_rate"] == lr] for lr in TINY["lr_grid"]}
        best = max(tune, key=lambda lr: sum(tune[lr]) / len(tune[lr]))
        assert row["best_lr"] == best
        chosen = [r for k, r in recs.items() if k.startswith(f"{arm}/")
                  and r["config"]["train"]["learning_rate"] == best]
        assert row["score"]["mean"] == pytest.approx(sum(r["results"]["headline_accuracy"] for r in chosen) / 2)
        assert row["sensitivity"] == pytest.approx(abs(sum(tune[3e-3]) - sum(tune[3e-2])) / 2)
        assert row["score"]["n"] == 2 and row["sources"] and all((suite / s).is_file() for s in row["sources"])
    assert rows["standard-adamw-cosine"]["vs_baseline"] is None
    assert rows["fractal-adamw-cosine"]["vs_baseline"]["p_holm"] is not None
    assert rows["standard-adamw-cosine"]["state_bytes"] > 0
    assert summary["evidence"]["gates"]["fractal"]["passed"]
    assert (suite / "run.md").read_text().count("| mqar |") == 2 and (suite / "state_accuracy.png").is_file()
    # resume: nothing retrains, the evidence is the same
    stamps = {p: p.stat().st_mtime_ns for p in suite.glob("*/*/b_*/lr_*/seed_*/summary.json")}
    again = run_probe_suite(ProbeConfig(**TINY), suite)
    assert {p: p.stat().st_mtime_ns for p in suite.glob("*/*/b_*/lr_*/seed_*/summary.json")} == stamps
    assert again["evidence"]["rows"] == summary["evidence"]["rows"]
    # a run killed mid-way (its directory there, no finished record) is the only one trained again
    cut = sorted(stamps)[0]
    cut.unlink()
    (cut.parent / "partial.tmp").write_text("half-written")
    run_probe_suite(ProbeConfig(**TINY), suite)
    after = {p: p.stat().st_mtime_ns for p in suite.glob("*/*/b_*/lr_*/seed_*/summary.json")}
    assert [p for p in after if after[p] != stamps.get(p)] == [cut]
    assert not (cut.parent / "partial.tmp").exists()
    # other shared settings under the same id are refused
    with pytest.raises(MgrError, match="other settings"):
        run_probe_suite(ProbeConfig(**{**TINY, "batch_size": 8}), suite)


def test_search_seeds_tune_on_the_first_seed_then_run_the_rest_at_its_rate(tmp_path):
    cfg = ProbeConfig(**{**TINY, "attention": ("standard",), "seeds": (0, 1, 2), "search_seeds": 1})
    suite = tmp_path / "p3"
    summary = run_probe_suite(cfg, suite)
    recs = _records(suite)
    seed0 = {r["config"]["train"]["learning_rate"]: r["results"]["tune_accuracy"]
             for k, r in recs.items() if k.endswith("seed_0/summary.json")}
    chosen = max(seed0, key=seed0.get)
    assert len(seed0) == 2 and len(recs) == 4  # seed 0 at both rates; seeds 1 and 2 at one
    assert {r["config"]["train"]["learning_rate"] for k, r in recs.items() if "seed_0" not in k} == {chosen}
    (row,) = summary["evidence"]["rows"]
    assert row["best_lr"] == chosen and row["score"]["n"] == 3
    with pytest.raises(MgrError, match="search-seeds"):
        ProbeConfig(**{**TINY, "search_seeds": 5})


def test_an_algebra_that_fails_the_gate_gets_no_runs_and_no_row(tmp_path, monkeypatch):
    import mgr.bench.gate as gate

    real = gate.check_algebra

    def broken(name, options=None, **kw):
        if name == "fractal":
            return {"algebra": name, "passed": False, "reason": "causality: leak 0.3", "checks": {}}
        return real(name, options, **kw)

    monkeypatch.setattr(gate, "check_algebra", broken)
    suite = tmp_path / "p2"
    summary = run_probe_suite(ProbeConfig(**{**TINY, "seeds": (0,), "lr_grid": (1e-2,)}), suite)
    assert [r["arm"] for r in summary["evidence"]["rows"]] == ["standard-adamw-cosine"]
    assert not list(suite.glob("fractal-*/**/summary.json"))
    assert any("fractal failed the correctness gate" in c and "leak 0.3" in c
               for c in summary["evidence"]["conclusions"])


def _score(arm, lr, seed, tune, report, budget=1e9):
    return {"task": "t", "arm": arm, "attention": arm, "optimizer": "adamw", "schedule": "cosine",
            "budget": budget, "lr": lr, "seed": seed, "status": "ok", "tune": tune, "report": report,
            "slices": {}, "steps": 10, "state_bytes": None, "source": f"{arm}/{lr}/{seed}"}


def test_selection_reads_only_the_tuning_slice_and_holm_covers_the_family():
    # lr 0.1 is best on the tuning slice and worst on the reported one: it must still be chosen,
    # and the reported score is its reported accuracy, not the better 0.01 numbers.
    scores = [_score("a", 0.1, s, 0.9, 0.5 + 0.01 * s) for s in range(3)]
    scores += [_score("a", 0.01, s, 0.6, 0.95 + 0.01 * s) for s in range(3)]
    scores += [_score("base", 0.1, s, 0.5, 0.3 + 0.01 * s) for s in range(3)]
    scores += [_score("same", 0.1, s, 0.5, 0.3 + 0.011 * s) for s in range(3)]
    ev = evidence.build(scores, metric="accuracy", higher_is_better=True, baseline="base")
    rows = {r["arm"]: r for r in ev["rows"]}
    assert rows["a"]["best_lr"] == 0.1 and rows["a"]["score"]["mean"] == pytest.approx(0.51)
    assert rows["a"]["sensitivity"] == pytest.approx(0.3)
    va, vs = rows["a"]["vs_baseline"], rows["same"]["vs_baseline"]
    assert va["significant"] and va["better"] and va["p_holm"] >= va["p"]
    assert not vs["significant"] and vs["better"] is None
    # Holm over two comparisons: the smaller p is doubled (it is also capped at 1)
    assert va["p_holm"] == pytest.approx(min(1.0, 2 * va["p"]))
    assert any("no difference" not in c and "a beats base" in c and "g = " in c for c in ev["conclusions"])


def test_a_budget_curve_gives_a_power_law_and_lower_is_better_for_loss():
    scores = []
    for budget, ce in ((1e9, 4.0), (1e10, 3.0), (1e11, 2.25)):  # ce = a * C^b exactly, b = log10(0.75)
        scores += [_score("base", 0.1, s, ce, ce * (1 + 0.001 * s), budget) for s in range(2)]
        scores += [_score("b", 0.1, s, ce + 0.5, (ce + 0.5) * (1 + 0.001 * s), budget) for s in range(2)]
    ev = evidence.build(scores, metric="val_ce", higher_is_better=False, baseline="base")
    fit = next(f for f in ev["fits"] if f["arm"] == "base")
    assert fit["b"] == pytest.approx(-0.1249, abs=2e-3)
    worse = [r for r in ev["rows"] if r["arm"] == "b"]
    assert all(r["vs_baseline"]["diff"] > 0 for r in worse)
    assert all(r["vs_baseline"]["better"] is False for r in worse if r["vs_baseline"]["significant"])


def test_state_bytes_grow_with_context_for_softmax_and_not_for_a_recurrent_state():
    def at(name, t):
        return state_bytes(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                       max_seq_len=t, attention=name))

    # standard: per layer two [T, G=2, K=8] float32 buffers plus T int32 positions
    assert at("standard", 16) == 2 * (2 * 16 * 2 * 8 * 4 + 16 * 4)
    assert at("standard", 64) == 4 * at("standard", 16)
    assert at("fractal", 64) == at("fractal", 16)


def test_bad_probe_input_is_one_line_and_exit_2(tmp_path):
    for args in (["-t", "nope"], ["--lr-grid", "0"], ["-a", "nope"], ["--budgets", "1e3,1e3"],
                 ["--task-options", "[1]"]):
        result = runner.invoke(app, ["probe", *args, "--artifacts-dir", str(tmp_path)])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
