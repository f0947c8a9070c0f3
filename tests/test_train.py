"""The trainer: loss falls, exact resume, divergence, budgets, and the run record."""

import json
import math

import pytest

from mgr.runtime.artifacts import render_run_md
from mgr.data import build_data
from core.errors import MgrError
from mgr.train import read_metrics, train

from helpers import TINY_DATA, tiny_model, tiny_train


@pytest.fixture(scope="module")
def data():
    return build_data(TINY_DATA)


def run(tmp_path, data, name="run", **kw):
    resume = kw.pop("resume", False)
    stop_after = kw.pop("stop_after", None)
    return train(tiny_model(), TINY_DATA, tiny_train(**kw), run_dir=tmp_path / "train" / name,
                 artifacts_root=tmp_path, data=data, resume=resume, stop_after=stop_after)


def test_loss_falls_and_record_is_complete(tmp_path, data):
    s = run(tmp_path, data, steps=40, eval_every=10)
    assert s["status"] == "ok", s["reason"]
    curve = s["results"]["val_curve"]
    assert [row[0] for row in curve] == [10, 20, 30, 40]
    assert curve[0][2] < math.log(512) - 0.5          # learned something by step 10 ...
    assert curve[-1][2] < curve[0][2] - 0.15           # ... and kept improving on held-out tokens
    assert s["results"]["train_ce_final"] < math.log(512) - 1.0
    b = s["budget"]
    assert b["flops_per_step_xla"] > 0 and b["flops_per_step_analytic"] > 0
    assert 0.5 < b["flops_per_step_xla"] / b["flops_per_step_analytic"] < 2.0
    assert b["tokens"] == 40 * TINY_DATA.batch_size * TINY_DATA.seq_len
    for key in ("tokens_per_second", "achieved_flops_per_second", "peak_memory_bytes"):
        assert s["results"][key] > 0
    # 0 when an earlier run of this process compiled the same step (tests/test_program_reuse.py)
    assert s["results"]["compile_seconds"] >= 0
    meta = s["meta"]
    assert {"run_id", "generated_at", "git", "versions", "device", "command"} <= set(meta)
    assert meta["device"]["platform"] == "cpu" and meta["device"]["cpu_arch"]
    text = (tmp_path / "train" / "run" / "summary.json").read_text()
    assert str(tmp_path) not in text and '"/' not in text  # no absolute paths in the record
    on_disk = json.loads(text)
    assert (tmp_path / "train" / "run" / "run.md").read_text() == render_run_md(on_disk)
    assert (tmp_path / "train" / "run" / "checkpoints" / "best").is_dir()


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, data):
    full = run(tmp_path, data, name="full")
    cut = run(tmp_path, data, name="cut", stop_after=8)
    assert cut["status"] == "interrupted"
    resumed = run(tmp_path, data, name="cut", resume=True)
    assert resumed["status"] == "ok"
    a = read_metrics(tmp_path / "train" / "full")
    b = read_metrics(tmp_path / "train" / "cut")
    assert [(m["kind"], m["step"]) for m in a] == [(m["kind"], m["step"]) for m in b]
    assert [m.get("loss", m.get("val_ce")) for m in a] == [m.get("loss", m.get("val_ce")) for m in b]
    assert resumed["results"]["val_curve"] == full["results"]["val_curve"]


class _CtrlCAfterReading:
    """`data` whose training iterator is interrupted (Ctrl-C) just after it hands out batch `at`:
    the batch was read, its step never ran."""

    def __init__(self, data, at):
        self._data, self._at = data, at

    def __getattr__(self, name):
        return getattr(self._data, name)

    def train_iterator(self, seed, rows=None):
        inner, at, count = self._data.train_iterator(seed, rows=rows), self._at, [0]

        class Interrupted:
            def __next__(self):
                batch = next(inner)
                count[0] += 1
                if count[0] == at:
                    raise KeyboardInterrupt
                return batch

            def get_state(self):
                return inner.get_state()

            def set_state(self, state):
                inner.set_state(state)

        return Interrupted()


def test_ctrl_c_after_a_batch_is_read_saves_a_checkpoint_that_resumes_exactly(tmp_path, data):
    full = run(tmp_path, data, name="full")
    cut = run(tmp_path, _CtrlCAfterReading(data, at=6), name="cut")
    assert cut["status"] == "interrupted" and "after step 5" in cut["reason"]
    resumed = run(tmp_path, data, name="cut", resume=True)
    assert resumed["status"] == "ok" and resumed["results"]["resumed_from"]["step"] == 5
    # the checkpoint's data state must not count the batch whose step never ran
    assert read_metrics(tmp_path / "train" / "cut") == read_metrics(tmp_path / "train" / "full")
    assert resumed["results"]["val_curve"] == full["results"]["val_curve"]


def test_non_finite_loss_is_recorded_as_diverged(tmp_path, data):
    s = run(tmp_path, data, learning_rate=float("inf"), grad_clip=0.0, warmup_steps=0)
    assert s["status"] == "diverged"
    assert "non-finite loss at step" in s["reason"]
    saved = json.loads((tmp_path / "train" / "run" / "summary.json").read_text())
    assert saved["status"] == "diverged"


def test_flops_budget_sets_steps_and_too_small_budget_is_refused(tmp_path, data):
    probe = run(tmp_path, data, name="probe", steps=8)
    per_step = probe["budget"]["flops_per_step_xla"]
    s = run(tmp_path, data, name="budget", steps=None, target_flops=per_step * 12.5, eval_every=4)
    assert s["budget"]["steps"] == 12 and s["budget"]["target_flops"] == per_step * 12.5
    with pytest.raises(MgrError, match="smallest budget that works"):
        run(tmp_path, data, name="tiny", steps=None, target_flops=per_step * 3)


def test_existing_run_is_not_overwritten(tmp_path, data):
    run(tmp_path, data, steps=8)
    with pytest.raises(MgrError, match="already exists"):
        run(tmp_path, data, steps=8)


def test_one_evaluation_call_gives_the_halves_of_two_separate_ones(data):
    """The validation pass is one call returning both halves' CE; each equals the mean CE the
    unoptimised path computed with one call per half, bit for bit, and the whole set's CE is
    their weighted mean as before."""
    import jax
    import jax.numpy as jnp

    from mgr.train import build_program, make_step
    from mgr.train.loop import _validate

    model, cfg = tiny_model(), tiny_train()  # tiny_train()'s own program: compiled by the runs above
    prog = build_program(model, cfg, (TINY_DATA.batch_size, TINY_DATA.seq_len + 1), 24)
    loss_of_params = make_step(model, cfg, 24).loss_of_params
    params = jax.tree.map(lambda p: p * 1.5, prog.state["params"])  # not the init: larger logits
    val = prog.put_val(data.val_batches())
    n = int(val.shape[0])
    h = n // 2
    assert n >= 2

    @jax.jit
    def half_ce(params, v):  # one call per half, as the loop did
        return jnp.mean(jax.lax.map(lambda b: loss_of_params(params, b), v))

    tune, report = float(half_ce(params, val[:h])), float(half_ce(params, val[h:]))
    assert tune != report
    assert _validate(prog, params, val) == ((h * tune + (n - h) * report) / n, tune, report)
    single = val[:1]  # one batch: no disjoint halves, every number is the whole set's
    assert _validate(prog, params, single) == (float(half_ce(params, single)),) * 3
