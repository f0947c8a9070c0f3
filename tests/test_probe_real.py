"""The probes are real: at the default suite's settings softmax attention solves the smallest
`mqar` setting, and a trained uniform causal average (test-only, never registered in the
shipped registry) stays near chance. Its chance is the bag-of-values level, 1 / num_pairs: an
average of the context sees which values are present (4 of 32) but not which key each belongs
to. Slow (two 1,700-step runs): `uv run pytest -m slow`."""

import dataclasses

import pytest

import attention
from attention import registry
from mgr.bench import probes
from mgr.bench.probe_runner import DEFAULTS, merge
from mgr.bench.probe_train import run_probe

from baselines import UniformCausalAverage


class _Uniform(UniformCausalAverage):
    def __init__(self, dims, cfg, *, rngs):
        super().__init__(dims, rngs=rngs)


@pytest.mark.slow
def test_softmax_solves_default_mqar_and_a_uniform_average_stays_near_chance(monkeypatch):
    fake = dataclasses.replace(attention.get("standard"), name="uniform", module_cls=_Uniform,
                               supports_cache=False, relative_positions=False)
    monkeypatch.setitem(registry._REGISTRY, "uniform", fake)  # for this test's process only
    cfg = merge({"attention": ("standard", "uniform")})
    data = probes.get("mqar").make(DEFAULTS["task_options"]["mqar"], 0)
    ((_, pairs),) = DEFAULTS["task_options"]["mqar"]["settings"]
    chance = 1 / pairs  # guessing among the values present in the context
    acc = {}
    for name in ("standard", "uniform"):
        model = cfg.model_config(name, data.max_seq_len, data.vocab_size)
        out = run_probe(model, cfg.train_config("adamw", "cosine", cfg.lr_grid[0], 0), data,
                        batch_size=cfg.batch_size, budget=cfg.budgets[0])
        assert out["status"] == "ok"
        acc[name] = out["results"]["headline_accuracy"]
    assert acc["standard"] >= 0.9, acc
    assert acc["uniform"] <= chance + 0.1, acc


@pytest.mark.slow
def test_two_worker_processes_give_the_losses_of_one_process(tmp_path):
    import json

    from mgr.bench.probe_suite import ProbeConfig, run_probe_suite
    from test_probe import TINY

    losses = {}
    for n in (1, 2):
        suite = tmp_path / f"w{n}"
        run_probe_suite(ProbeConfig(**{**TINY, "workers": n}), suite)
        losses[n] = {str(p.relative_to(suite)): json.loads(p.read_text())["results"]["loss_curve"]
                     for p in suite.glob("*/*/b_*/lr_*/seed_*/summary.json")}
    assert len(losses[1]) == 8 and losses[1] == losses[2]
