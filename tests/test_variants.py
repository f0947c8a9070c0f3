"""Named model variants as benchmark and probe arms: sweep files, the ModelConfig each entry
builds, arm names and records, one-line refusals, the gate over every algebra a variant uses,
and one tiny end-to-end bench and probe suite (shapes the bench and probe tests already compile)."""

import json

import pytest
from typer.testing import CliRunner

from core.errors import MgrError
from mgr.bench import BenchConfig, run_bench, variants
from mgr.bench import gate as gate_mod
from mgr.bench.probe_runner import merge as probe_merge
from mgr.bench.probe_suite import ProbeConfig, run_probe_suite
from mgr.bench.probe_train import state_bytes
from mgr.bench.runner import merge as bench_merge
from mgr.bench.suite import _check_same_suite, check_gates, run_path
from mgr.cli import app
from mgr.data import build_data

from helpers import TINY_DATA
from test_bench import MODEL, bench
from test_probe import TINY

runner = CliRunner()

SWEEP = """
[grid]
attention = ["hyb", "standard", "wide"]
seeds = [0, 1]
[model]
n_layers = 1
d_model = 32
n_heads = 4
n_kv_heads = 2
attention_options = {tropical = {beta = 4.0}, fractal = {levels = 2}}
[variants.hyb]
attention = ["standard", "tropical"]
n_layers = 2
attention_options = {tropical = {beta = 8.0}}
[variants.wide]
d_model = 64
"""
BENCH_ONLY = "[data]\nvocab_size = 512\nseq_len = 32\n"
PROBE_ONLY = "[budget]\nbudgets = [4e8]\n[probe]\nbatch_size = 8\n[task_options.mqar]\nsettings = [[16, 2]]\n"


def _write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_sweep_with_two_variants_builds_their_models_names_arms_and_records_overrides(tmp_path):
    cfg = bench_merge({}, _write(tmp_path, SWEEP + BENCH_ONLY))
    hyb, plain, wide = (cfg.model_config(e) for e in cfg.attention)
    assert hyb.attention == ("standard", "tropical") and hyb.n_layers == 2 and hyb.d_model == 32
    # dict fields merge one level: the variant's tropical options, the suite's fractal ones
    assert hyb.attention_options == {"tropical": {"beta": 8.0}, "fractal": {"levels": 2}}
    assert plain.attention == "standard" and plain.n_layers == 1
    assert plain.attention_options["tropical"] == {"beta": 4.0}
    assert wide.d_model == 64 and wide.n_layers == 1 and wide.attention == "standard"
    for m in (hyb, plain, wide):  # the data fixes the vocabulary; its length is the context
        assert (m.vocab_size, m.max_seq_len) == (512, 32)
    model, _, train = cfg.configs("hyb", "adamw", "cosine", 1)
    assert model == hyb and train.seed == 1
    assert [a[0] for a in cfg.arms()] == ["hyb", "standard", "wide"]
    assert run_path("hyb", "adamw", "cosine", 8e8, 1e-2, 0) == "hyb-adamw-cosine/b_8e+08/lr_0.01/seed_0"
    recorded = json.loads(json.dumps(cfg.to_dict()))
    assert recorded["variants"]["hyb"]["attention"] == ["standard", "tropical"]
    models = {m["arm"]: m for m in variants.arm_models(recorded, {})}
    assert models["hyb-adamw-cosine"]["variant"] == "hyb"
    assert models["hyb-adamw-cosine"]["model_overrides"] == recorded["variants"]["hyb"]
    assert models["standard-adamw-cosine"] == {"arm": "standard-adamw-cosine", "variant": None,
                                               "model_overrides": {"attention": "standard"}, "gated_out_by": []}
    # the probe reads the same tables; its task fixes the vocabulary and the length
    pcfg = probe_merge({}, _write(tmp_path, SWEEP + PROBE_ONLY, "probe.toml"))
    assert pcfg.batch_size == 8 and pcfg.budgets == (4e8,) and pcfg.task_options["mqar"]["settings"] == [[16, 2]]
    m = pcfg.model_config("hyb", 40, 70)
    assert m.attention == ("standard", "tropical") and (m.vocab_size, m.max_seq_len, m.n_layers) == (70, 40, 2)
    assert pcfg.baseline_arm() == "hyb-adamw-cosine"


BAD = {
    "collision": ("[variants.tropical]\nattention = \"standard\"\n", "has the name of a registered algebra"),
    "unknown-field": ("[variants.hyb]\nattention = \"standard\"\nwidth = 3\n", "variant 'hyb': unknown ModelConfig fields ['width']"),
    "bad-value": ("[variants.hyb]\nd_model = 30\n", "variant 'hyb': d_model (30) must be divisible by n_heads (4)"),
    "bad-algebra": ("[variants.hyb]\nattention = [\"standard\", \"nope\"]\n", "variant 'hyb': unknown attention 'nope'"),
    "fixed-field": ("[variants.hyb]\nvocab_size = 100\n", "variant 'hyb' sets vocab_size, which the suite fixes"),
}


@pytest.mark.parametrize("command", ["bench-fixed-flops", "probe"])
@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_a_bad_variant_is_one_line_and_exit_2_before_anything_trains(tmp_path, case, command):
    text, words = BAD[case]
    base = "[grid]\nattention = [\"standard\"]\n[model]\nd_model = 32\nn_heads = 4\nn_kv_heads = 2\n"
    path = _write(tmp_path, base + text)
    result = runner.invoke(app, [command, "--sweep", str(path), "--artifacts-dir", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ") and words in result.output, \
        result.output
    assert not list((tmp_path / "a").rglob("summary.json"))


def test_a_grid_entry_that_is_neither_a_variant_nor_an_algebra_is_refused():
    with pytest.raises(MgrError, match="'hybrid' is neither a variant \\(dense\\) nor a registered algebra"):
        BenchConfig(attention=("hybrid",), variants={"dense": {"attention": "standard"}})


def _fake_gate(monkeypatch, failing=("tropical",)):
    """The gate tests' fake (`check_entry` replaced, results forgotten): records each check."""
    calls = []

    def fake(entry, cfg, *, seed=0):
        calls.append((entry.name, cfg.attention_options.get(entry.name)))
        bad = entry.name in failing
        return {"algebra": entry.name, "passed": not bad, "reason": "causality: leak 0.5" if bad else None,
                "seconds": 0.0, "checks": {"causal_max_leak": 0.5 if bad else 0.0, "reference_max_err": 0.0,
                                           "cache_max_err": 0.0}}

    monkeypatch.setattr(gate_mod, "_RESULTS", {})
    monkeypatch.setattr(gate_mod, "check_entry", fake)
    return calls


def test_the_gate_checks_every_distinct_algebra_of_the_variants_once(tmp_path, monkeypatch):
    calls = _fake_gate(monkeypatch)
    cfg = bench(attention=("standard", "mix", "mix2", "frac"), model={**MODEL, "n_layers": 3}, variants={
        "mix": {"attention": ["standard", "tropical", "fractal"]},
        "mix2": {"attention": ["fractal", "tropical"], "attention_options": {"tropical": {"beta": 8.0}}},
        "frac": {"attention": ["fractal", "standard"], "n_layers": 1}})  # one layer: fractal alone
    plan, gates = check_gates(cfg, tmp_path)
    assert sorted(calls, key=str) == sorted([("standard", None), ("tropical", None), ("fractal", None),
                                             ("tropical", {"beta": 8.0})], key=str)
    assert plan.labels == {"standard": ("standard",), "mix": ("standard", "tropical", "fractal"),
                           "mix2": ("fractal", "tropical@mix2"), "frac": ("fractal",)}
    assert plan.failed("mix", gates) == ["tropical"] and plan.failed("mix2", gates) == ["tropical@mix2"]
    assert plan.failed("standard", gates) == [] == plan.failed("frac", gates)
    recorded = json.loads((tmp_path / "gates" / "tropical@mix2.json").read_text())
    assert recorded["used_by"] == ["mix2"] and not recorded["passed"]
    assert json.loads((tmp_path / "gates" / "standard.json").read_text())["used_by"] == ["standard", "mix"]


@pytest.fixture(scope="module")
def data():
    return build_data(TINY_DATA)


def test_a_variant_arm_trains_is_recorded_and_a_gated_out_one_is_named(tmp_path, data, monkeypatch):
    import mgr.bench.report as report

    calls = _fake_gate(monkeypatch)
    monkeypatch.setattr(report, "plot_curves", lambda summary, path: None)  # seconds per call, not tested here
    # rev builds exactly the reversible model tests/test_bench.py trains, so no new compile
    rev = {"attention": "reversible"}
    cfg = bench(attention=("rev", "mix"),
                variants={"rev": rev, "mix": {"attention": ["standard", "tropical"], "n_layers": 2}})
    suite = tmp_path / "s"
    summary = run_bench(cfg, suite, tmp_path, data=data)
    assert sorted(c[0] for c in calls) == ["reversible", "standard", "tropical"]
    arms = {a["arm"]: a for a in summary["arms"]}
    assert list(arms) == ["rev-adamw-cosine", "mix-adamw-cosine"]
    assert arms["rev-adamw-cosine"]["statuses"] == {"ok": 1}
    assert arms["rev-adamw-cosine"]["variant"] == "rev" and arms["rev-adamw-cosine"]["model_overrides"] == rev
    (run,) = arms["rev-adamw-cosine"]["runs"]
    rec = json.loads((suite / run["path"]).read_text())
    assert run["path"].startswith("rev-adamw-cosine/b_8e+08/")
    assert rec["config"]["model"]["attention"] == "reversible"  # the override reached the trained model
    mix = arms["mix-adamw-cosine"]
    assert mix["runs"] == [] and mix["gated_out_by"] == ["tropical"] and not list(suite.glob("mix-*"))
    assert any("tropical failed the correctness gate" in t and "not run because they use it: mix" in t
               for t in summary["conclusions"]["text"])
    md = (suite / "run.md").read_text()
    assert "## Variants" in md and '- `rev`: {"attention": "reversible"}' in md and "gated out" in md
    assert [r["attention"] for r in summary["evidence"]["rows"]] == ["rev"]
    from mgr.bench import research

    said = research.conclusions(research.load_suite(suite, tmp_path))  # the research report's sentences
    assert any("tropical was gated out" in c and "use it: mix" in c for c in said)
    # resume: a variant may be added, never redefined under the same suite id (its runs would mix)
    _check_same_suite(bench(attention=cfg.attention, variants={**cfg.variants, "dense": {"attention": "standard"}}),
                      suite)
    with pytest.raises(MgrError, match="other settings \\(variant rev\\)"):
        run_bench(bench(attention=cfg.attention, variants={**cfg.variants, "rev": {"attention": "braid"}}),
                  suite, tmp_path, data=data)


def test_a_probe_suite_runs_variant_arms_records_them_and_names_a_gated_out_one(tmp_path, monkeypatch):
    """The probe suite's own machinery (gates, jobs, records, summary) with training faked: the
    bench test above trains for real, and this one must not add compiles."""
    import mgr.bench.probe_report as probe_report
    import mgr.bench.probe_suite as probe_suite
    import mgr.bench.probe_train as probe_train

    _fake_gate(monkeypatch, failing=("fractal",))
    trained = {}

    def fake_run_probe(model_cfg, train_cfg, data, *, batch_size, budget, on_step=None):
        trained[model_cfg.attention] = model_cfg
        acc = 0.5 if model_cfg.attention == "standard" else 0.75
        return {"status": "ok", "reason": None, "budget": {"target_flops": budget, "steps": 10},
                "results": {"tune_accuracy": acc, "test_accuracy": {"t": acc}, "headline_accuracy": acc}}

    monkeypatch.setattr(probe_train, "run_probe", fake_run_probe)
    monkeypatch.setattr(probe_suite, "preflight", lambda cfg: None)  # it would lower every arm's step
    monkeypatch.setattr(probe_report, "plot_state_accuracy", lambda summary, path: None)  # seconds each
    hyb = {"attention": ["standard", "tropical"], "n_layers": 2}
    cfg = ProbeConfig(**{**TINY, "attention": ("dense", "hyb", "mix"), "seeds": (0,), "lr_grid": (1e-2,),
                         "variants": {"dense": {"attention": "standard"}, "hyb": hyb,
                                      "mix": {"attention": ["standard", "fractal"], "n_layers": 2}}})
    summary = run_probe_suite(cfg, tmp_path / "p")
    assert set(trained) == {"standard", ("standard", "tropical")} and trained[("standard", "tropical")].n_layers == 2
    rows = {r["arm"]: r for r in summary["evidence"]["rows"]}
    assert set(rows) == {"dense-adamw-cosine", "hyb-adamw-cosine"}
    assert rows["hyb-adamw-cosine"]["attention"] == "hyb" and rows["hyb-adamw-cosine"]["score"]["mean"] == 0.75
    (src,) = rows["hyb-adamw-cosine"]["sources"]
    assert src.startswith("hyb-adamw-cosine/mqar/")
    rec = json.loads((tmp_path / "p" / src).read_text())
    assert rec["config"]["variant"] == "hyb" and rec["config"]["model"]["attention"] == hyb["attention"]
    # decoding state from each arm's own model: the hybrid's two layers against dense's one
    seq = rec["config"]["model"]["max_seq_len"]
    assert rows["hyb-adamw-cosine"]["state_bytes"] == state_bytes(cfg.model_config("hyb", seq))
    assert rows["hyb-adamw-cosine"]["state_bytes"] != rows["dense-adamw-cosine"]["state_bytes"]
    models = {m["arm"]: m for m in summary["arm_models"]}
    assert models["mix-adamw-cosine"]["gated_out_by"] == ["fractal"] and models["hyb-adamw-cosine"]["variant"] == "hyb"
    assert not list((tmp_path / "p").glob("mix-*"))
    assert any("fractal failed the correctness gate" in c and "use it: mix" in c
               for c in summary["evidence"]["conclusions"])
    assert '- `hyb`: {"attention": ["standard", "tropical"], "n_layers": 2}' in (tmp_path / "p" / "run.md").read_text()


def test_decoding_state_bytes_follow_each_variants_own_layers():
    cfg = ProbeConfig(**{**TINY, "model": {**TINY["model"], "n_layers": 2}, "attention": ("mix",),
                         "variants": {"mix": {"attention": ["standard", "fractal"]},
                                      "std": {"attention": "standard"}, "frac": {"attention": "fractal"}}})
    size = {name: state_bytes(cfg.model_config(name, 64)) for name in ("mix", "std", "frac")}
    assert size["std"] != size["frac"]
    assert 2 * size["mix"] == size["std"] + size["frac"]  # one layer of each
