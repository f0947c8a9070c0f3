"""Feed-forward kinds in configurations, run records and the CLI: `ModelConfig.ffn` patterns and
`ffn_options`, old records, the trainer's record, one-line errors for bad knobs, and the `--ffn`
flags of `train`, `bench-fixed-flops` and `probe` (no compilation here)."""

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import ffn
from core.errors import MgrError
from mgr.config import ModelConfig, TrainConfig

SMALL = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, max_seq_len=8)
HYBRID = dict(attention=("standard", "tropical"), ffn=("relu2", "moe"))
KINDS = ffn.names()


def model_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


def test_ffn_pattern_tiles_and_round_trips_through_the_record():
    cfg = model_cfg(n_layers=3, ffn=["relu2", "moe"], ffn_options={"moe": {"n_experts": 2}})
    assert cfg.ffn == ("relu2", "moe") and [cfg.layer_ffn(i) for i in range(3)] == ["relu2", "moe", "relu2"]
    assert cfg.ffn_config("moe").n_experts == 2
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("ffn", "ffn_options")}
    assert ModelConfig.from_dict(old).ffn == "relu2" and ModelConfig.from_dict(old).ffn_options == {}


def test_run_record_holds_the_feed_forward_config(tmp_path):
    from mgr.config import DataConfig
    from mgr.train.trainer import _record

    cfg = model_cfg(**HYBRID, ffn_options={"moe": {"top_k": 2}})
    prog = SimpleNamespace(flops_per_step=1.0, compile_seconds=0.0, memory={})
    data = SimpleNamespace(describe=lambda: {})
    rec = _record(cfg, DataConfig(vocab_size=300), TrainConfig(), data, prog, 1, tmp_path / "r", tmp_path)
    model = json.loads(json.dumps(rec))["config"]["model"]
    assert model["ffn"] == ["relu2", "moe"] and model["ffn_options"] == {"moe": {"top_k": 2}}
    assert ModelConfig.from_dict(model) == cfg


@pytest.mark.parametrize("kw, words", [
    (dict(ffn="nonesuch"), f"unknown ffn 'nonesuch'; valid: {', '.join(KINDS)}"),
    (dict(ffn=("relu2", "nonesuch")), "unknown ffn 'nonesuch'"),
    (dict(ffn=()), "at least one feed-forward kind"),
    (dict(ffn="moe", ffn_options={"moe": {"top_k": 5}}), "top_k (5) cannot exceed n_experts (4)"),
    (dict(ffn="moe", ffn_options={"moe": {"n_experts": 0}}), "n_experts must be an integer >= 1"),
    (dict(ffn="moe", ffn_options={"moe": {"top_k": 0}}), "top_k must be an integer >= 1"),
    (dict(ffn="moe", ffn_options={"moe": {"capacity_factor": -1}}), "capacity_factor must be >= 0"),
    (dict(ffn="moe", ffn_options={"moe": {"experts": 4}}), "bad options for ffn 'moe'"),
    (dict(ffn_options={"moe": {"top_k": 9}}), "cannot exceed n_experts"),  # unused kinds too
    (dict(ffn="swiglu", ffn_options={"swiglu": {"width_scale": 0}}), "width_scale must be positive"),
    (dict(attention=("standard", "reversible"), ffn=("relu2", "moe"), n_layers=2),
     "layer 1: attention 'reversible' builds its own residual module"),
])
def test_bad_ffn_configs_are_one_line_errors(kw, words):
    with pytest.raises(MgrError) as err:
        model_cfg(**kw)
    assert words in str(err.value) and "\n" not in str(err.value)


runner = CliRunner()


@pytest.mark.parametrize("args, words", [
    (["--ffn", "nonesuch"], ["unknown ffn 'nonesuch'", "relu2, swiglu, moe"]),
    (["--ffn", "moe", "--ffn-options", '{"moe": {"top_k": 5}}'], ["top_k (5) cannot exceed n_experts (4)"]),
    (["--ffn", "relu2,moe", "--ffn-options", '{"moe": {"n_experts": 0}}'], ["n_experts must be"]),
    (["--ffn-options", "{oops"], ["--ffn-options must be a JSON object"]),
])
def test_bad_ffn_flags_exit_2_with_one_line(args, words, tmp_path):
    from mgr.cli import app

    result = runner.invoke(app, ["train", "--artifacts-dir", str(tmp_path), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and all(w in err for w in words), err


def test_ffn_flags_reach_the_model_config_of_train_bench_and_probe(tmp_path, monkeypatch):
    import mgr.bench.probe_runner
    import mgr.bench.runner
    import mgr.train
    from mgr.cli import app

    seen = {}

    def capture_train(model_cfg, *a, **kw):
        seen["train"] = model_cfg
        raise MgrError("captured")

    def capture(name):
        def run(flags, *a, **kw):
            seen[name] = flags["model"]
            raise MgrError("captured")
        return run

    monkeypatch.setattr(mgr.train, "train", capture_train)
    monkeypatch.setattr(mgr.bench.runner, "run_from_cli", capture("bench"))
    monkeypatch.setattr(mgr.bench.probe_runner, "run_from_cli", capture("probe"))
    flags = ["--ffn", "relu2,moe", "--ffn-options", '{"moe": {"top_k": 2}}', "--artifacts-dir", str(tmp_path)]
    for command in (["train", "--no-progress"], ["bench-fixed-flops"], ["probe"]):
        result = runner.invoke(app, [*command, *flags])
        assert result.exit_code == 2 and "captured" in result.stderr, result.output
    assert seen["train"].ffn == ("relu2", "moe") and seen["train"].ffn_config("moe").top_k == 2
    for name in ("bench", "probe"):
        assert seen[name]["ffn"] == ("relu2", "moe") and seen[name]["ffn_options"] == {"moe": {"top_k": 2}}
    bench = mgr.bench.runner.merge({"attention": ("standard",), "model": seen["bench"]}, None)
    model, _, _ = bench.configs("standard", "adamw", "cosine", 0)
    assert model.ffn == ("relu2", "moe") and model.ffn_config("moe").top_k == 2
