"""Sharded parameters and optimizer state over a (`data`, `fsdp`) mesh, and checkpoints across
layouts: the partition rule, the mesh flags' bad input, and (in one subprocess with 4 simulated
CPU devices, `tests/sharding_checks.py`) equal losses for every algebra and optimizer under
fsdp=2, halved per-device bytes, and runs resumed under another layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attention
import optim
from core.errors import MgrError
from mgr.cli import app
from mgr.config import TrainConfig, parse_mesh
from mgr.train import sharding

from helpers import assert_user_error

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
SMALL = ["--n-embd", "32", "--n-layer", "1", "--seq-len", "16", "--batch-size", "4",
         "--vocab-size", "512", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def backend_started():
    """One device in this process: `--mesh` given in-process must not add simulated CPU devices
    for the rest of the session (it only can before the backend starts)."""
    import jax

    jax.devices()


@pytest.fixture(scope="module")
def checks():
    # (conftest's XLA_FLAGS, the legacy fusion emitters included, are inherited)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    proc = subprocess.run([sys.executable, "tests/sharding_checks.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, XLA_FLAGS=flags.strip()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def close(xs, ys, rel=1e-5):
    return len(xs) == len(ys) > 0 and all(abs(x - y) <= rel * abs(x) for x, y in zip(xs, ys))


# ---- the partition rule ------------------------------------------------------------------------

@pytest.mark.parametrize("shape,fsdp,spec", [
    ((512, 32), 2, ("fsdp", None)),  # the largest axis
    ((32, 128), 4, (None, "fsdp")),
    ((3, 1000), 2, (None, "fsdp")),
    ((1001, 6), 2, (None, "fsdp")),  # the largest axis is not divisible: the next one
    ((7, 333), 2, ()),  # nothing divisible: replicated
    ((64, 64), 2, ("fsdp", None)),  # ties: the first axis
    ((32,), 2, ()),  # below MIN_SHARDED: replicated
    ((), 2, ()),
    ((512, 32), 1, ()),
])
def test_the_rule_shards_the_largest_divisible_axis_of_large_leaves(shape, fsdp, spec):
    assert tuple(sharding.leaf_spec(shape, fsdp)) == spec


def test_one_process_feeds_every_row():
    assert sharding.local_rows(sharding.make_mesh({"data": 1, "fsdp": 1}), 8) == slice(0, 8)


# ---- configuration and records -----------------------------------------------------------------

def test_mesh_config_round_trips_and_old_records_read_as_data_parallel():
    cfg = TrainConfig(mesh=parse_mesh("data=2,fsdp=2"))
    assert cfg.devices == 4 and cfg.layout == {"data": 2, "fsdp": 2}
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig(mesh={"fsdp": 2}).layout == {"data": 1, "fsdp": 2}
    old = {k: v for k, v in TrainConfig(devices=2).to_dict().items() if k != "mesh"}  # before `mesh`
    assert TrainConfig.from_dict(old).layout == {"data": 2, "fsdp": 1}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args,words", [
    (["--mesh", "data=2,fsdp=2"], ["--mesh data=2,fsdp=2 but only 1 cpu device(s)"]),
    (["--mesh", "tensor=2"], ["unknown mesh axis 'tensor'; the axes are data, fsdp"]),
    (["--mesh", "data=0"], ["mesh axis data must be a positive integer, got 0"]),
    (["--mesh", "fsdp=-2"], ["mesh axis fsdp must be a positive integer, got -2"]),
    (["--mesh", "data=2,fsdp=4"], ["batch size 4 is not divisible by --mesh data=2,fsdp=4 (data-parallel size 8)"]),
    (["--mesh", "data=2,fsdp"], ["--mesh must be AXIS=SIZE pairs"]),
    (["--mesh", "data=2,data=1"], ["names axis 'data' twice"]),
    (["--mesh", "fsdp=2", "--devices", "4"], ["--devices 4 disagrees with --mesh fsdp=2 (2 devices)"]),
])
def test_bad_mesh_is_one_line_and_exit_2(args, words, tmp_path):
    assert_user_error(invoke("train", *SMALL, "--artifacts-dir", tmp_path, *args), *words)


@pytest.mark.parametrize("args,words", [
    (["--mesh", "tensor=2"], ["unknown mesh axis 'tensor'"]),
    (["--mesh", "data=2,fsdp=2"], ["--mesh data=2,fsdp=2 but only 1 cpu device(s)"]),
    (["--mesh", "fsdp=4", "--batch-size", "6"], ["batch size 6 is not divisible"]),
])
def test_bench_refuses_a_bad_mesh_in_one_line(args, words, tmp_path):
    assert_user_error(invoke("bench-fixed-flops", "-a", "standard", "--seeds", "0", "--no-gate",
                             "--artifacts-dir", tmp_path, *args), *words)


def test_resume_takes_the_layout_asked_for_now_else_the_recorded_one(tmp_path, monkeypatch):
    import mgr.train
    from helpers import TINY_DATA, tiny_model

    run = tmp_path / "train" / "r"
    run.mkdir(parents=True)
    recorded = TrainConfig(mesh={"data": 1, "fsdp": 2})
    (run / "summary.json").write_text(json.dumps({"config": {
        "model": tiny_model().to_dict(), "data": TINY_DATA.to_dict(), "train": recorded.to_dict()}}))
    seen = []

    def capture(model_cfg, data_cfg, train_cfg, **kw):
        seen.append(train_cfg.layout)
        raise MgrError("captured")

    monkeypatch.setattr(mgr.train, "train", capture)
    for flags in ([], ["--devices", "1"], ["--mesh", "data=2,fsdp=2"]):
        assert_user_error(invoke("train", "--resume", "--run-id", "r", "--artifacts-dir", tmp_path, *flags),
                          "captured")
    assert seen == [{"data": 1, "fsdp": 2}, {"data": 1, "fsdp": 1}, {"data": 2, "fsdp": 2}]


# ---- several devices (one subprocess) ------------------------------------------------------------

def _sharded_like_halves(one: dict, fsdp2: dict) -> None:
    assert one["sharded_leaves"] == 0 and fsdp2["sharded_leaves"] > 0
    # Half of every large leaf per device; only norms, biases and scalars stay whole.
    for key in ("param_bytes", "state_bytes", "argument_bytes"):
        assert 0.5 <= fsdp2[key] / one[key] <= 0.53, (key, fsdp2[key], one[key])


def test_every_algebra_trains_the_same_under_fsdp2_on_half_the_bytes(checks):
    assert sorted(checks["algebras"]) == sorted(attention.names())
    for name, run in checks["algebras"].items():
        assert close(run["one"]["losses"], run["fsdp2"]["losses"]), (name, run)
        _sharded_like_halves(run["one"], run["fsdp2"])


def test_muon_and_hoss_under_fsdp2_equal_their_unsharded_losses(checks):
    assert sorted(checks["optimizers"]) == sorted(n for n in optim.names() if n != "adamw")
    for name, run in checks["optimizers"].items():
        assert close(run["one"]["losses"], run["fsdp2"]["losses"]), (name, run)
        _sharded_like_halves(run["one"], run["fsdp2"])


def test_a_run_saved_under_one_layout_resumes_under_another(checks):
    layouts = checks["layouts"]
    whole = [layouts["whole"][str(s)] for s in range(1, 7)]
    expected = {"fsdp2_to_one": ({"data": 1, "fsdp": 2}, {"data": 1, "fsdp": 1}),
                "one_to_data2_fsdp2": ({"data": 1, "fsdp": 1}, {"data": 2, "fsdp": 2})}
    for name, (before, after) in expected.items():
        run = layouts["runs"][name]
        assert run["status"] == "ok" and run["mesh"] == after
        assert run["resumed_from"] == {"step": 3, "layout": before}
        assert close([run["first"][str(s)] for s in (1, 2, 3)], whole[:3]), run
        assert close([run["all"][str(s)] for s in range(1, 7)], whole), run


def test_a_checkpoint_restores_into_either_layout_with_the_same_values(checks):
    assert checks["layouts"]["restored_equal"] is True
