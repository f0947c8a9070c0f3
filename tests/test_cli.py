"""The command line: `mgr list`, a short `mgr train`, and one-line errors with exit code 2."""

import json

import pytest
from typer.testing import CliRunner

import attention
import optim
from mgr.cli import app

from helpers import write_shards

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


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err


def test_list_shows_every_registered_name():
    result = invoke("list")
    assert result.exit_code == 0
    for name in attention.names() + optim.names() + optim.schedule_names():
        assert name in result.stdout


def test_train_writes_a_record_and_resume_of_a_broken_checkpoint_fails_cleanly(tmp_path, user_data):
    art = tmp_path / "art"
    ok = invoke("train", *SMALL, "--steps", 6, "--eval-every", 3, "--checkpoint-every", 3,
                "--data", user_data, "--run-id", "r1", "--artifacts-dir", art)
    assert ok.exit_code == 0, ok.output
    summary = json.loads((art / "train" / "r1" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["budget"]["steps"] == 6
    assert summary["config"]["dataset"]["corpus"] == str(user_data)
    # corrupt every array file of the checkpoints
    for f in (art / "train" / "r1" / "checkpoints").rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(b"garbage")
    assert_user_error(invoke("train", "--resume", "--run-id", "r1", "--artifacts-dir", art,
                             "--no-progress"), "checkpoint")


@pytest.mark.parametrize("args, words", [
    (["--attention", "nonesuch"], ["unknown attention 'nonesuch'", "standard"]),
    (["--optimizer", "sgdx"], ["unknown optimizer 'sgdx'", "adamw"]),
    (["--schedule", "zigzag"], ["unknown schedule 'zigzag'", "cosine"]),
    (["--n-head", "4", "--n-kv-head", "3"], ["divisible by n_kv_heads"]),
    (["--n-embd", "12", "--n-head", "4"], ["even for RoPE"]),
    (["--target-flops", "1000"], ["smallest budget that works"]),
    (["--attention-options", "{oops"], ["JSON"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, user_data):
    full = ["train", *SMALL, "--data", user_data, "--artifacts-dir", tmp_path, *args]
    assert_user_error(invoke(*full), *words)


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
