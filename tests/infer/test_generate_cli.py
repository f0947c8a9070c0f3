"""`mgr generate` and `mgr export` on the command line: output, streaming, checkpoints, and bad
input as one line with exit code 2."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from core.errors import MgrError
from mgr.cli import app
from mgr.infer import SamplingParams, load_engine

from helpers import assert_user_error

runner = CliRunner()
PROMPT = "To be, or not to be, that is the question:"
LONG = "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. " * 3


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def generate(run, *args):
    return invoke("generate", "--run", run.run_id, "--artifacts-dir", run.root, *args)




def test_greedy_generation_prints_the_completion_streamed_or_not(trained_run):
    args = ("--prompt", PROMPT, "--max-new-tokens", 8, "--temperature", 0)
    plain, streamed = generate(trained_run, *args), generate(trained_run, *args, "--stream")
    assert plain.exit_code == 0 and streamed.exit_code == 0, plain.output + streamed.output
    engine = load_engine(run=trained_run.run_id, artifacts_dir=trained_run.root)
    ids = engine.generate(engine.encode(PROMPT), SamplingParams(max_new_tokens=8, temperature=0.0))
    assert plain.stdout == streamed.stdout == engine.decode(ids) + "\n"
    stats = plain.stderr.strip().splitlines()[-1]
    assert stats.startswith(f"{len(ids)} new tokens after a {len(engine.encode(PROMPT))}-token prompt")
    assert "time to first token" in stats and "tokens/s" in stats


def test_a_run_directory_and_each_checkpoint_name_load(trained_run):
    for checkpoint in ("best", "final", "16", "24"):
        result = invoke("generate", "--run", trained_run.run_dir, "--checkpoint", checkpoint, "--prompt", "To",
                        "--max-new-tokens", 2, "--temperature", 0, "--no-stats")
        assert result.exit_code == 0, result.output
        assert result.stderr == ""


def test_a_prompt_too_long_names_the_limit_or_is_cut_from_the_left(trained_run):
    assert_user_error(generate(trained_run, "--prompt", LONG, "--max-new-tokens", 8),
                      "exceeds the context of 32 tokens", "max_seq_len", "--truncate-left")
    cut = generate(trained_run, "--prompt", LONG, "--max-new-tokens", 8, "--truncate-left", "--temperature", 0)
    assert cut.exit_code == 0, cut.output
    assert "dropped from the left" in cut.stderr and "after a 24-token prompt" in cut.stderr


@pytest.fixture(scope="module")
def no_checkpoints(trained_run, tmp_path_factory):
    """A run whose record exists but that kept no checkpoints."""
    root = tmp_path_factory.mktemp("art")
    (root / "train" / "bare").mkdir(parents=True)
    shutil.copy(trained_run.run_dir / "summary.json", root / "train" / "bare" / "summary.json")
    return root


def test_bad_input_is_one_line_with_exit_code_2(trained_run, no_checkpoints, tmp_path):
    root = trained_run.root
    assert_user_error(invoke("generate", "--run", "nonesuch", "--artifacts-dir", root), "no training run 'nonesuch'")
    assert_user_error(invoke("generate", "--run", "bare", "--artifacts-dir", no_checkpoints),
                      "run 'bare' has no checkpoints")
    assert_user_error(generate(trained_run, "--checkpoint", "latest"),
                      "unknown checkpoint 'latest'", "best, final or a step number", "16, 24")
    assert_user_error(generate(trained_run, "--checkpoint", "5"), "no checkpoint at step 5", "16, 24")
    assert_user_error(generate(trained_run, "--model", tmp_path), "exactly one of --run")
    assert_user_error(invoke("generate", "--prompt", "x"), "exactly one of --run")
    assert_user_error(generate(trained_run, "--temperature", -1), "temperature must be >= 0")
    assert_user_error(generate(trained_run, "--prompt-file", tmp_path / "absent.txt"), "cannot read --prompt-file")
    assert_user_error(invoke("generate", "--model", tmp_path / "absent"), "no export at")
    assert_user_error(invoke("export", "nonesuch", "--out", tmp_path / "e", "--artifacts-dir", root),
                      "no training run 'nonesuch'")
    assert_user_error(invoke("export", trained_run.run_id, "--out", tmp_path / "e", "--artifacts-dir", root,
                             "--quantize", "int4"), "unknown quantization 'int4'", "int8")
    (tmp_path / "taken").mkdir()
    assert_user_error(invoke("export", trained_run.run_id, "--out", tmp_path / "taken", "--artifacts-dir", root),
                      "already exists", "--overwrite")
    assert list((tmp_path / "taken").iterdir()) == []  # refused before anything was written


def test_export_overwrite_replaces_and_generate_reads_it(trained_run, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = invoke("export", trained_run.run_id, "--out", out, "--artifacts-dir", trained_run.root,
                    "--checkpoint", "best", "--overwrite", "--val-batches", 2)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "tokenizer.model", "weights.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["checkpoint"] == "best" and config["evaluation"]["batches"] == 2
    args = ("--prompt", PROMPT, "--max-new-tokens", 6, "--temperature", 0)
    from_export = invoke("generate", "--model", out, *args)
    from_run = generate(trained_run, "--checkpoint", "best", *args)
    assert from_export.exit_code == 0 and from_export.stdout == from_run.stdout


def test_training_saves_the_tokenizer_and_older_runs_use_the_cache(trained_run, tmp_path, monkeypatch):
    from mgr.config import ModelConfig
    from mgr.data import build_data
    from mgr.infer.load import run_tokenizer

    from helpers import TINY_DATA

    saved = (trained_run.run_dir / "tokenizer.model").read_bytes()
    assert saved == build_data(TINY_DATA).tokenizer.model_proto
    old = tmp_path / "old"  # a run from before training saved its tokenizer
    old.mkdir()
    cfg = ModelConfig.from_dict(trained_run.summary["config"]["model"])
    assert run_tokenizer(old, trained_run.summary, cfg).model_proto == saved  # from the cache
    monkeypatch.setenv("MGR_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(MgrError, match="has no tokenizer.model, and tokenizer .* is no longer"):
        run_tokenizer(old, trained_run.summary, cfg)
