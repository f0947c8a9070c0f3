"""`mgr bench-inference` on a tiny model: the record's fields, ordered percentiles, a peak RSS
measured in the child process, the files, the last output line, and bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mgr.cli import app

runner = CliRunner()
# The trainer tests' tokenizer (vocab 512 from a 600 KB corpus) is reused from the cache.
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--vocab-size", "512", "--max-seq-len", "16",
        "--tokenizer-vocab", "512", "--corpus-bytes", "600000", "--prompt-tokens", "6", "--new-tokens", "4",
        "--requests", "3", "--batch", "2", "--batch-rounds", "2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One configuration (one spawned interpreter costs ~10 s of imports and compiles on a busy
    2-core machine); int8, the path with more code in it. Both dtypes: the slow test below."""
    out = tmp_path_factory.mktemp("bench-inference")
    result = runner.invoke(app, ["bench-inference", "-a", "standard", "--quantize", "int8", *TINY,
                                 "--run-id", "t1", "--artifacts-dir", str(out)])
    assert result.exit_code == 0, result.output
    return out / "bench" / "inference" / "t1", result


def test_record_fields_and_files(tiny_run):
    run_dir, result = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["schema_version"] == "mgr.bench.inference.v1"
    assert (run_dir / "run.md").read_text().startswith("# Inference benchmark `t1`")
    # The last line printed is the record itself.
    assert json.loads(result.stdout.strip().splitlines()[-1]) == summary
    assert [(r["algebra"], r["weights"], r["status"]) for r in summary["rows"]] == [("standard", "int8", "ok")]
    assert summary["all_ok"] and summary["config"]["requests"] == 3
    assert summary["budgets"] == {"peak_rss_mb": 400.0, "request_p95_ms": 250.0}
    for r in summary["rows"]:
        assert r["requests"] == 3 and r["tokens"] == 3 * 4  # EOS never ends a timed request
        assert r["batch"] == 2 and r["batch_tokens"] == 2 * 2 * 4  # every row of every round counted
        assert r["tokens_per_second_batch_1"] > 0 and r["tokens_per_second_batch_n"] > 0
        assert all(s > 0 for s in r["compile_seconds"].values())
        assert r["within_budget"] == (r["peak_rss_bytes"] <= 400 * 2 ** 20
                                      and r["request_latency_ms"]["p95"] <= 250)


def test_percentiles_are_ordered_and_consistent(tiny_run):
    run_dir, _ = tiny_run
    for r in json.loads((run_dir / "summary.json").read_text())["rows"]:
        for key in ("ttft_ms", "token_latency_ms", "request_latency_ms"):
            p = r[key]
            assert 0 < p["p50"] <= p["p95"] <= p["p99"], (key, p)
        # A request lasts at least its first token plus its later ones.
        assert r["request_latency_ms"]["p99"] >= r["ttft_ms"]["p50"]


def test_peak_rss_comes_from_each_fresh_child(tiny_run):
    run_dir, _ = tiny_run
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    assert all(r["pid"] != os.getpid() for r in rows)
    # A JAX process holds tens of MB at least; a bytes/KiB mix-up would be off by 1024.
    assert all(20 * 2 ** 20 < r["peak_rss_bytes"] < 8 * 2 ** 30 for r in rows)


def test_peak_rss_is_the_childs_own_not_its_parents():
    """Linux keeps ru_maxrss across fork + exec: a child of a 400 MB parent would report 400 MB."""
    import numpy as np

    ballast = np.ones(400 * 2 ** 20 // 8)  # every page written, so resident
    probe = subprocess.run([sys.executable, "-c", "from mgr.bench.inference import peak_rss_bytes; "
                            "print(*peak_rss_bytes())"], capture_output=True, text=True, timeout=120)
    del ballast
    assert probe.returncode == 0, probe.stderr
    peak, source = probe.stdout.split()
    assert source == "VmHWM" and 0 < int(peak) < 300 * 2 ** 20


def test_a_failing_configuration_is_recorded_and_the_rest_still_run(tmp_path):
    """A per-configuration limit no child can meet: each is killed and recorded as a timeout,
    the next still runs, the record is written, and the exit code says something failed."""
    result = runner.invoke(app, ["bench-inference", "-a", "standard,tropical", "--quantize", "float32", *TINY,
                                 "--timeout-s", "0.01", "--run-id", "t2", "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "bench" / "inference" / "t2" / "summary.json").read_text())
    assert [(r["algebra"], r["status"]) for r in summary["rows"]] == [("standard", "timeout"), ("tropical", "timeout")]
    assert not summary["all_ok"] and not summary["all_within_budget"]
    assert "timeout" in (tmp_path / "bench" / "inference" / "t2" / "run.md").read_text()


@pytest.mark.slow
def test_every_configuration_gets_its_own_process(tmp_path):
    result = runner.invoke(app, ["bench-inference", "-a", "standard,surreal", *TINY, "--run-id", "t3",
                                 "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench" / "inference" / "t3" / "summary.json").read_text())["rows"]
    assert [(r["algebra"], r["weights"]) for r in rows] == \
        [("standard", "float32"), ("standard", "int8"), ("surreal", "float32"), ("surreal", "int8")]
    assert len({r["pid"] for r in rows}) == 4 and all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("flags,words", [
    (["-a", "nonexistent"], ["nonexistent", "standard"]),
    (["--quantize", "int4"], ["--quantize", "int4"]),
    (["--requests", "0"], ["--requests"]),
    (["--prompt-tokens", "120", "--new-tokens", "20"], ["context of 128"]),
    (["--run-id", "../x"], ["run id"]),
])
def test_bad_flags_are_one_line_errors(flags, words, tmp_path):
    result = runner.invoke(app, ["bench-inference", *flags, "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output
    for w in words:
        assert w in err, err
    assert not (tmp_path / "bench").exists()
