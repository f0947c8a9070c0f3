"""Resume at the trainer level: a finished run's record survives, a run killed after its last
checkpoint is completed without losing what it measured, an unreadable newest checkpoint falls
back to an older one (still bit-exact), and the best validation score survives a resume when
validation rises after its minimum."""

import json
import shutil

import numpy as np
import pytest

import mgr.train.trainer as trainer
from mgr.data import build_data
from mgr.train import read_metrics, train
from mgr.train.resume import last_train_loss

from helpers import TINY_DATA, tiny_model, tiny_train

# The step program is tiny_train()'s own (eval and checkpoint cadence live on the host), so its
# compilation is shared with tests/test_train.py. Validation is scripted to fall and then rise:
# the score is |held-out CE - C|, a function of the parameters alone (so it is the same in an
# interrupted and resumed run), and the real CE falls steadily through C (measured: 6.09 5.51
# 5.25 5.15 5.12 5.11 at steps 4..24), so the score's minimum is at step 12 and it rises after.
C = 5.23
CADENCE = dict(eval_every=4, checkpoint_every=4)
CUT = 20  # interrupted after the minimum; the two newest checkpoints are at steps 16 and 20


@pytest.fixture(scope="module", autouse=True)
def scripted_validation():
    real = trainer.build_program

    def build(*args, **kw):
        prog = real(*args, **kw)
        held_out_ce = prog.eval_fn  # [tuning half, reported half]; equal halves: their mean is the whole's
        prog.eval_fn = lambda params, val: np.full(2, abs(float(np.mean(held_out_ce(params, val))) - C))
        return prog

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "build_program", build)
        yield


@pytest.fixture(scope="module")
def data():
    return build_data(TINY_DATA)


def run(run_dir, data, **kw):
    return train(tiny_model(), TINY_DATA, tiny_train(**CADENCE), run_dir=run_dir,
                 artifacts_root=run_dir.parent.parent, data=data, **kw)


@pytest.fixture(scope="module")
def full(tmp_path_factory, data):
    """The uninterrupted run: its directory and summary."""
    run_dir = tmp_path_factory.mktemp("full") / "train" / "full"
    return run_dir, run(run_dir, data)


def copy_run(src, tmp_path, name):
    dst = tmp_path / "train" / name
    shutil.copytree(src, dst)
    return dst


def losses(run_dir):
    return [(m["kind"], m["step"], m.get("loss", m.get("val_ce"))) for m in read_metrics(run_dir)]


def best_checkpoint_steps(run_dir):
    return [int(p.name) for p in (run_dir / "checkpoints" / "best").iterdir() if p.name.isdigit()]


def test_resume_falls_back_to_an_older_checkpoint_and_keeps_the_best_score(tmp_path, data, full):
    """Interrupted after the validation minimum, with the newest checkpoint unreadable: the run
    resumes from the older one (after the minimum too), reproduces the uninterrupted run's
    losses exactly, replaces the unreadable checkpoint when it reaches that step again, and keeps
    the best score and step although validation only rises after the point it resumed from."""
    full_dir, f = full
    curve = f["results"]["val_curve"]
    ces = [row[2] for row in curve]
    lowest = min(range(len(ces)), key=ces.__getitem__)
    best_step = curve[lowest][0]
    # the setup this test needs (re-measure C if the model or data changed): the minimum falls
    # before the checkpoint the run resumes from, and validation rises after it
    assert best_step < 16 and all(ce > ces[lowest] for ce in ces[lowest + 1:]), ces
    assert f["results"]["val_ce_best"] == ces[lowest] and f["results"]["val_ce_best_step"] == best_step

    run_dir = tmp_path / "train" / "cut"
    assert run(run_dir, data, stop_after=CUT)["status"] == "interrupted"
    for p in (run_dir / "checkpoints" / str(CUT) / "state").rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")
    r = run(run_dir, data, resume=True)
    assert r["status"] == "ok", r["reason"]  # saving step CUT again replaced the unreadable one
    assert r["reason"] == f"checkpoint at step {CUT} unreadable; resumed from step 16"
    assert losses(run_dir) == losses(full_dir)  # bit-exact from the older checkpoint too
    assert r["results"]["val_curve"] == curve
    assert r["results"]["val_ce_best"] == f["results"]["val_ce_best"] == min(ces)
    assert r["results"]["val_ce_best_step"] == best_step
    assert r["results"]["val_ce_final"] > r["results"]["val_ce_best"]
    assert best_checkpoint_steps(run_dir) == best_checkpoint_steps(full_dir) == [best_step]


def test_resuming_a_finished_run_leaves_its_record_intact(tmp_path, data, full):
    run_dir = copy_run(full[0], tmp_path, "done")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    r = run(run_dir, data, resume=True)
    assert r == json.loads(before["summary.json"])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_run_killed_after_its_final_checkpoint_is_completed_with_its_measurements(tmp_path, data, full):
    full_dir, f = full
    run_dir = copy_run(full_dir, tmp_path, "killed")
    # the record as it stood while the last session ran: status running, no results yet
    running = json.loads((run_dir / "summary.json").read_text())
    running["status"] = "running"
    running["results"] = {k: running["results"][k]
                          for k in ("compile_seconds", "peak_memory_bytes", "temp_memory_bytes")}
    (run_dir / "summary.json").write_text(json.dumps(running))
    r = run(run_dir, data, resume=True)
    assert r["status"] == "ok" and r["reason"] is None
    for key in ("steps_completed", "train_ce_final", "val_ce_final", "val_ce_best", "val_ce_best_step",
                "val_curve", "train_seconds", "tokens_per_second", "achieved_flops_per_second"):
        assert r["results"][key] == f["results"][key], key
    assert r["results"]["tokens_per_second"] > 0
    assert losses(run_dir) == losses(full_dir)


def test_last_train_loss_falls_back_to_the_metrics_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kind": "train", "step": 7, "loss": 2.5}\n{"kind": "val", "step": 8, "val_ce": 3.0}\n'
                   '{"kind": "train", "step": 8, "loss": 2.25}\n{"kind": "tr')  # last line cut by a kill
    assert last_train_loss({"step": 8, "train_loss": 1.5}, log) == 1.5
    assert last_train_loss({"step": 8}, log) == 2.25  # a checkpoint from before meta held the loss
    assert last_train_loss({"step": 9}, log) is None
