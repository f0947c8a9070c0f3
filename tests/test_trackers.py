"""Experiment trackers (`--tracker tensorboard,mlflow`): what they hold is read back, from the
TensorBoard event files and the MLflow file store, and compared with the JSON record.

One tiny training run serves most checks: trained with both trackers and a third that breaks,
cut short, its newest checkpoint deleted (as if the process died after logging steps it never
saved), then resumed. A two-configuration fixed-FLOPs suite checks the suite's mapping.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from core.errors import MgrError
from mgr.train import read_metrics, train
from mgr.train import trackers as tr

from helpers import TINY_DATA, tiny_model, tiny_train

runner = CliRunner()
STEPS, CUT, RESUMED_FROM = 12, 6, 4


# ---- reading TensorBoard event files back (tensorboardX writes them but has no reader) ----

def events(logdir: Path) -> list:
    """Every Event of every event file in `logdir`, files in the order they were written.

    TFRecord framing: uint64 length, uint32 CRC of the length, the payload, uint32 CRC of the
    payload (the CRCs are not checked here)."""
    from tensorboardX.proto.event_pb2 import Event

    files = []
    for path in Path(logdir).glob("events.out.tfevents.*"):
        data, at, mine = path.read_bytes(), 0, []
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            mine.append(Event.FromString(data[at + 12:at + 12 + n]))
            at += 12 + n + 4
        files.append(mine)
    files.sort(key=lambda evs: evs[0].wall_time)  # each file opens with its file_version event
    return [e for evs in files for e in evs]


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalar points as TensorBoard shows them: a SessionLog.START at step S (a writer opened
    with purge_step=S) hides every earlier point at a step >= S."""
    from tensorboardX.proto.event_pb2 import SessionLog

    out: dict[str, list[tuple[int, float]]] = {}
    for e in events(logdir):
        if e.HasField("session_log") and e.session_log.status == SessionLog.START:
            out = {tag: [(s, v) for s, v in pts if s < e.step] for tag, pts in out.items()}
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def hparams_plugin(logdir: Path, tag: str) -> list:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    return [HParamsPluginData.FromString(v.metadata.plugin_data.content)
            for e in events(logdir) for v in e.summary.value if v.tag == tag]


def f32(xs):
    return [float(np.float32(x)) for x in xs]


class Broken:
    """A tracker whose run raises at its third row: the training run must not notice."""

    name = "broken"

    def start_run(self, name, params, tags, *, previous=None, resume_step=None):
        class Run:
            ref = {"broken": True}
            rows = 0

            def log(self, step, metrics):
                Run.rows += 1
                if Run.rows == 3:  # only the first line of the message is recorded
                    raise RuntimeError("disk full\nsecond line")

            def finish(self, *a, **kw):
                pass

        return Run()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The run trained in two sessions with both trackers (and, in the first, a broken one)."""
    from mgr.data import build_data

    root = tmp_path_factory.mktemp("trackers")
    run_dir = root / "train" / "r"
    data = build_data(TINY_DATA)
    cfg = dict(steps=STEPS, eval_every=4, checkpoint_every=4)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        first = train(tiny_model(), TINY_DATA, tiny_train(**cfg), run_dir=run_dir, artifacts_root=root, data=data,
                      stop_after=CUT, trackers=[*tr.from_flags("tensorboard,mlflow", root, root), Broken()])
    shutil.rmtree(run_dir / "checkpoints" / str(CUT))  # killed before this checkpoint existed
    final = train(tiny_model(), TINY_DATA, tiny_train(**cfg), run_dir=run_dir, artifacts_root=root, data=data,
                  resume=True, trackers=tr.from_flags("tensorboard,mlflow", root, root))
    return {"root": root, "run_dir": run_dir, "first": first, "final": final, "stderr": err.getvalue(),
            "data": data}


def _jsonl(run_dir: Path, kind: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run_dir) if r["kind"] == kind]


def test_a_failing_tracker_is_recorded_and_never_fails_the_run(resumed):
    first = resumed["first"]
    assert first["status"] == "interrupted"  # what stop_after gives; not "error"
    assert first["results"]["tracker_error"] == "broken: RuntimeError: disk full"
    assert resumed["stderr"].count("warning: tracker") == 1
    assert "tracker_error" not in resumed["final"]["results"]


def test_mlflow_holds_the_record_once_per_step_across_the_resume(resumed):
    from mlflow.tracking import MlflowClient

    run_dir, final = resumed["run_dir"], resumed["final"]
    assert final["status"] == "ok"
    client = MlflowClient(tracking_uri=(resumed["root"] / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name(tr.TRAIN_EXPERIMENT)
    [run] = client.search_runs([exp.experiment_id])  # the resumed session continued the same run
    ledger = json.loads((run_dir / "tracker.json").read_text())
    assert ledger["mlflow"] == {"ref": {"run_id": run.info.run_id}, "finished": True}
    assert run.info.status == "FINISHED" and run.info.run_name == "r"

    def history(key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                  key=lambda m: m.step)]

    # every step once, with the log's exact (float64) values, although steps 5 and 6 were
    # logged by the first session and trained again by the second
    assert history("train/loss") == _jsonl(run_dir, "train", "loss")
    assert [s for s, _ in history("train/loss")] == list(range(1, STEPS + 1))
    assert history("train/grad_norm") == _jsonl(run_dir, "train", "grad_norm")
    for key, field in (("val/ce", "val_ce"), ("val/ce_tune", "val_ce_tune"), ("val/ce_report", "val_ce_report")):
        assert history(key) == _jsonl(run_dir, "val", field)
    assert history("flops") == _jsonl(run_dir, "train", "flops")
    assert [s for s, _ in history("train/tokens_per_second")] == [4, 8, 12]
    res = final["results"]
    assert history("final/val_ce_final") == [(STEPS, res["val_ce_final"])]
    assert history("final/train_ce_final") == [(STEPS, res["train_ce_final"])]
    data = client.get_run(run.info.run_id).data
    assert data.params["model.d_model"] == "32" and data.params["train.learning_rate"] == "0.01"
    assert data.params["budget.steps"] == str(STEPS)
    assert data.tags["mgr.status"] == "ok" and data.tags["mgr.run_id"] == "r"
    path = client.download_artifacts(run.info.run_id, "summary.json", str(resumed["root"] / "dl"))
    assert json.loads(Path(path).read_text())["results"]["val_curve"] == res["val_curve"]


def test_tensorboard_shows_each_step_once_with_the_logged_values(resumed):
    run_dir, final = resumed["run_dir"], resumed["final"]
    logdir = resumed["root"] / "tensorboard" / tr.TRAIN_EXPERIMENT / "r"
    sc = scalars(logdir)
    for tag, kind, field in (("train/loss", "train", "loss"), ("train/grad_norm", "train", "grad_norm"),
                             ("val/ce", "val", "val_ce"), ("val/ce_report", "val", "val_ce_report"),
                             ("flops", "train", "flops")):
        want = _jsonl(run_dir, kind, field)
        assert [s for s, _ in sc[tag]] == [s for s, _ in want], tag  # purged, so no step twice
        assert [v for _, v in sc[tag]] == f32(v for _, v in want), tag  # event scalars are float32
    # without the purge the killed session's steps 5 and 6 would show twice
    raw = [e.step for e in events(logdir) for v in e.summary.value if v.tag == "train/loss"]
    assert sorted(raw) != sorted(set(raw)) and max(raw.count(s) for s in (5, 6)) == 2
    assert sc["final/val_ce_final"][-1] == (STEPS, float(np.float32(final["results"]["val_ce_final"])))
    # HParams: written once, when the run ended ok (not by the interrupted session)
    [start] = hparams_plugin(logdir, "_hparams_/session_start_info")
    hp = start.session_start_info.hparams
    assert hp["model.d_model"].number_value == 32 and hp["train.optimizer"].string_value == "adamw"
    [exp] = hparams_plugin(logdir, "_hparams_/experiment")
    assert "final/val_ce_final" in [m.name.tag for m in exp.experiment.metric_infos]
    [end] = hparams_plugin(logdir, "_hparams_/session_end_info")
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def test_a_tracker_first_asked_for_at_resume_gets_the_rows_already_logged(resumed, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "copy"
    shutil.copytree(resumed["run_dir"], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    ledger = json.loads((run_dir / "tracker.json").read_text())
    del ledger["mlflow"]  # as if the first sessions had no --tracker mlflow
    (run_dir / "tracker.json").write_text(json.dumps(ledger))
    tracking = tr.open_train_run(tr.from_flags("mlflow", tmp_path, tmp_path), run_dir, resumed["final"],
                                 resume_step=RESUMED_FROM)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    run_id = tracking.refs()["mlflow"]["run_id"]
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert loss == [(s, v) for s, v in _jsonl(run_dir, "train", "loss") if s <= RESUMED_FROM]
    assert json.loads((run_dir / "tracker.json").read_text())["mlflow"]["ref"] == {"run_id": run_id}


def test_a_suite_is_one_experiment_with_one_run_per_configuration(resumed, tmp_path):
    """`run_bench` on a suite whose two configurations are already finished (copies of the
    trained run) reports both records, so the suite's tracking runs without training."""
    from mlflow.tracking import MlflowClient

    from mgr.bench import BenchConfig, run_bench
    from mgr.bench.tracking import experiment_name

    cfg = BenchConfig(attention=("standard",), seeds=(0, 1), target_flops=8e8, gate=False,
                      model={"n_layers": 1, "d_model": 32, "n_heads": 4, "n_kv_heads": 2},
                      data=TINY_DATA.to_dict(), train={"eval_every": 5, "min_steps": 5})
    suite = tmp_path / "bench" / "fixed_flops" / "s1"
    rels = [f"standard-adamw-cosine/b_8e+08/lr_0.003/seed_{s}" for s in (0, 1)]
    for rel in rels:
        shutil.copytree(resumed["run_dir"], suite / rel, ignore=shutil.ignore_patterns("checkpoints", "tracker.json"))

    def suite_run(kinds):
        return run_bench(cfg, suite, tmp_path, data=resumed["data"],
                         trackers=tr.from_flags(kinds, tmp_path, tmp_path, experiment_name("fixed_flops", suite)))

    summary = suite_run("mlflow,tensorboard")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    [exp] = [e for e in client.search_experiments() if e.name != "Default"]
    assert exp.name == "fixed_flops/s1"
    assert exp.tags["mlflow.note.content"] == (suite / "run.md").read_text()
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == rels
    [arm] = summary["arms"]
    log = read_metrics(resumed["run_dir"])
    for rel, run in runs.items():
        loss = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert loss == [(r["step"], r["loss"]) for r in log if r["kind"] == "train"]
        assert run.data.metrics["final/val_ce_final"] == resumed["final"]["results"]["val_ce_final"]
        assert run.data.tags["mgr.seed"] == rel[-1] and run.data.tags["mgr.arm"] == arm["arm"]
        assert run.data.tags["mgr.lr"] == "0.003" and run.data.tags["suite.best_arm"] == "True"
        assert float(run.data.tags["suite.val_ce_mean"]) == pytest.approx(arm["val_ce"]["mean"], rel=1e-5)
        tb = scalars(tmp_path / "tensorboard" / "fixed_flops" / "s1" / rel)["train/loss"]
        assert [v for _, v in tb] == f32(v for _, v in loss)
    # resuming the finished suite logs nothing twice
    suite_run("mlflow")
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_probe_records_map_to_curves_and_final_accuracies(tmp_path):
    from mgr.bench.tracking import SuiteTracking, probe_run

    record = {"status": "ok", "reason": None, "meta": {"run_id": "seed_0"},
              "config": {"model": {"d_model": 32}, "train": {"optimizer": "adamw"}, "task": "mqar"},
              "budget": {"target_flops": 4e8, "steps": 20, "steps_done": 20},
              "results": {"loss_curve": [[10, 2.5], [20, 1.25]], "tune_accuracy": 0.5, "headline_accuracy": 0.75,
                          "test_accuracy": {"T16": 0.75},
                          "phases": [{"phase": "all", "step": 20, "tune": 0.5, "test": {"T16": 0.75}}]}}
    rel = "standard-adamw-cosine/mqar/b_4e+08/lr_0.003/seed_0"
    tracking = SuiteTracking(tr.from_flags("mlflow", tmp_path, tmp_path, "probe/p"), tmp_path / "p", probe_run)
    tracking.log(rel, record)
    tracking.log(rel, record)  # reported again on resume: logged once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("probe/p").experiment_id])
    got = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
           for k in ("train/loss", "tune/accuracy", "test/T16", "final/test_accuracy/T16")}
    assert got == {"train/loss": [(10, 2.5), (20, 1.25)], "tune/accuracy": [(20, 0.5)],
                   "test/T16": [(20, 0.75)], "final/test_accuracy/T16": [(20, 0.75)]}
    assert run.data.params["task"] == "mqar" and run.data.tags["mgr.lr"] == "0.003"


def test_a_missing_package_or_unknown_kind_is_one_line_exit_2(tmp_path, monkeypatch):
    from mgr.cli import app

    with pytest.raises(MgrError, match="unknown --tracker wandb; valid: mlflow, tensorboard"):
        tr.parse("tensorboard,wandb")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow-skinny were not installed
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    for kind, dist in (("mlflow", "mlflow-skinny"), ("tensorboard", "tensorboardX")):
        result = runner.invoke(app, ["train", "--tracker", kind, "--artifacts-dir", str(tmp_path)])
        assert result.exit_code == 2
        assert result.output.strip() == f"error: --tracker {kind} needs {dist}: uv sync --extra trackers " \
                                        f"(or pip install 'mgr[trackers]')"
    assert not (tmp_path / "train").exists() or not any((tmp_path / "train").rglob("summary.json"))


def test_the_default_store_is_outside_artifacts_and_a_store_inside_it_is_refused(tmp_path):
    """MLflow's file store reports every run under a directory named `artifacts` as missing, so
    the default stores sit beside the artifacts directory and such a --tracker-dir is refused."""
    (built,) = tr.from_flags("mlflow", None, tmp_path / "artifacts")
    assert built.store == (tmp_path / "tracking" / "mlruns").resolve()
    run = built.start_run("r", {"a": 1}, {"t": "x"})
    run.log(1, {"train/loss": 2.5})  # found again by the store: the default path works
    with pytest.raises(MgrError, match="directory named 'artifacts'"):
        tr.from_flags("mlflow", tmp_path / "artifacts" / "t", tmp_path / "artifacts")
