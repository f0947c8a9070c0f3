"""The command line: `mgr list`, a short `mgr train`, and one-line errors with exit code 2."""

import json
import shutil

import pytest
from typer.testing import CliRunner

import attention
import ffn
import optim
from core.errors import MgrError
from mgr.cli import app

from helpers import assert_user_error, write_shards

runner = CliRunner()
SMALL = ["--n-embd", "32", "--n-layer", "1", "--seq-len", "16", "--batch-size", "2",
         "--vocab-size", "512", "--no-progress"]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A user's data directory: three small parquet shards of English and code."""
    import inspect
    import json as json_mod

    texts = [inspect.getsource(json_mod), "To be, or not to be, that is the question. " * 200,
             "Zażółć gęślą jaźń. " * 100]
    d = tmp_path_factory.mktemp("userdata")
    return write_shards(d, [texts, texts[::-1], texts])


@pytest.fixture(autouse=True, scope="module")
def backend_started():
    """Start JAX's backend first: `--devices N` given in-process must not add simulated CPU
    devices for the rest of the session (it only can before the backend starts)."""
    import jax

    jax.devices()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])




def test_list_shows_every_registered_name():
    result = invoke("list")
    assert result.exit_code == 0
    for name in attention.names() + ffn.names() + optim.names() + optim.schedule_names():
        assert name in result.stdout


def test_train_writes_a_record_and_resume_of_a_broken_checkpoint_fails_cleanly(tmp_path, user_data):
    art = tmp_path / "art"
    ok = invoke("train", *SMALL, "--steps", 6, "--eval-every", 3, "--checkpoint-every", 3,
                "--data", user_data, "--run-id", "r1", "--artifacts-dir", art)
    assert ok.exit_code == 0, ok.output
    run_dir = art / "train" / "r1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["budget"]["steps"] == 6
    assert summary["config"]["dataset"]["corpus"] == str(user_data)
    # resuming the finished run says so and leaves its record as it was, byte for byte
    before = {name: (run_dir / name).read_bytes() for name in ("summary.json", "run.md", "metrics.jsonl")}
    again = invoke("train", "--resume", "--run-id", "r1", "--artifacts-dir", art, "--no-progress")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("complete: run 'r1' already finished 6/6 steps")
    assert len(again.stdout.strip().splitlines()) == 1 and "train CE nan" not in again.stdout
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    # a run killed before its final checkpoint, whose other checkpoints are all unreadable,
    # fails in one line that names the run and the steps (no library reprs) and keeps its record
    summary["status"] = "running"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    record = (run_dir / "summary.json").read_bytes()
    shutil.rmtree(run_dir / "checkpoints" / "6")
    for f in (run_dir / "checkpoints").rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(b"garbage")
    result = invoke("train", "--resume", "--run-id", "r1", "--artifacts-dir", art, "--no-progress")
    assert_user_error(result, "cannot resume run 'r1': no readable checkpoint (tried step 6 (best), 3)")
    assert "<" not in result.stderr and "0x" not in result.stderr and "orbax" not in result.stderr
    assert (run_dir / "summary.json").read_bytes() == record


@pytest.mark.parametrize("args, words", [
    (["--attention", "nonesuch"], ["unknown attention 'nonesuch'", "standard"]),
    (["--optimizer", "sgdx"], ["unknown optimizer 'sgdx'", "adamw"]),
    (["--schedule", "zigzag"], ["unknown schedule 'zigzag'", "cosine"]),
    (["--n-head", "4", "--n-kv-head", "3"], ["divisible by n_kv_heads"]),
    (["--n-embd", "12", "--n-head", "4"], ["even for RoPE"]),
    (["--target-flops", "1000"], ["smallest budget that works"]),
    (["--attention-options", "{oops"], ["JSON"]),
    (["--attention-options", ""], ["JSON object"]),
    (["--steps", "0"], ["steps must be positive, got 0"]),
    (["--steps", "-5"], ["steps must be positive, got -5"]),
    (["--n-kv-head", "0"], ["n_kv_heads must be positive, got 0"]),
    (["--devices", "0"], ["devices must be >= 1, got 0"]),
    (["--devices", "3"], ["batch size 2 is not divisible by --devices 3"]),
    (["--devices", "2"], ["--devices 2 but only 1 cpu device(s)"]),
    (["--run-id", "../../x"], ["not a valid run id"]),
    (["--run-id", "a/b"], ["not a valid run id"]),
    (["--run-id", ".hidden"], ["not a valid run id"]),
    (["--run-id", ""], ["not a valid run id"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, user_data):
    full = ["train", *SMALL, "--data", user_data, "--artifacts-dir", tmp_path, *args]
    assert_user_error(invoke(*full), *words)


def test_devices_reaches_the_train_config(tmp_path, user_data, monkeypatch):
    import mgr.train

    seen = {}

    def capture(model_cfg, data_cfg, train_cfg, **kw):
        seen["train"] = train_cfg
        raise MgrError("captured")

    monkeypatch.setattr(mgr.train, "train", capture)
    assert_user_error(invoke("train", *SMALL, "--data", user_data, "--artifacts-dir", tmp_path,
                             "--devices", 2), "captured")
    assert seen["train"].devices == 2


@pytest.mark.parametrize("command", [["train", *SMALL], ["bench-fixed-flops"], ["bench-throughput"],
                                     ["run", "standard"], ["run-all"]])
@pytest.mark.parametrize("run_id", ["../../escaped", "a/b"])
def test_every_command_refuses_a_run_id_that_leaves_its_directory(command, run_id, tmp_path):
    art = tmp_path / "deep" / "art"
    assert_user_error(invoke(*command, "--run-id", run_id, "--artifacts-dir", art), "not a valid run id")
    assert list(tmp_path.rglob("*")) == []  # nothing written anywhere


@pytest.mark.parametrize("command, where", [(["train", *SMALL], "train"),
                                            (["bench-fixed-flops"], "bench/fixed_flops")])
def test_a_run_in_use_by_another_process_is_refused(command, where, tmp_path, user_data):
    from mgr.runtime import runs

    with runs.locked(tmp_path / where / "busy"):  # another open file description: flock conflicts
        result = invoke(*command, "--data", user_data, "--run-id", "busy", "--artifacts-dir", tmp_path)
    assert_user_error(result, "'busy' is in use by another process")
    assert not (tmp_path / where / "busy").exists()


def test_bad_data_dirs(tmp_path):
    base = ["train", *SMALL, "--artifacts-dir", tmp_path / "art", "--data"]
    assert_user_error(invoke(*base, tmp_path / "missing"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke(*base, tmp_path / "empty"), "parquet")
    bad = write_shards(tmp_path / "bad", [["a"], ["b"]], column="body")
    assert_user_error(invoke(*base, bad), "text", "body")


def test_resume_without_a_run_is_a_user_error(tmp_path):
    assert_user_error(invoke("train", "--resume", "--run-id", "ghost", "--artifacts-dir", tmp_path),
                      "ghost")
    assert_user_error(invoke("train", "--resume", "--artifacts-dir", tmp_path), "--run-id")
