"""Every demo runs with few steps and its certificates pass; the CLI's exit codes."""

import json

import pytest
from typer.testing import CliRunner

from mgr import demos
from mgr.cli import app
from mgr.demos import base

runner = CliRunner()
SMALL_STEPS = 3
# Demos that took 17-47 s each in a cold fresh-clone suite (stop 20: reversible 46, braid 24,
# ultrametric 22, gauge 21, tropical 18): `slow`, so the default suite keeps to its budget; their
# algebras' identities stay in the default suite through tests/attention/.
LONG_DEMOS = {"reversible", "braid", "ultrametric", "gauge", "tropical"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LONG_DEMOS else n
                                  for n in demos.names()])
def test_demo_passes_with_few_steps(name, tmp_path):
    result = runner.invoke(app, ["run", name, "--steps", str(SMALL_STEPS), "--seed", "1",
                                 "--run-id", "t", "--artifacts-dir", str(tmp_path)])
    record = json.loads((tmp_path / "demos" / name / "t" / "summary.json").read_text())
    failed = [c for c in record["certificates"] if not c["passed"]]
    assert result.exit_code == 0, (record["reason"], failed)
    assert record["passed"] and record["certificates"] and record["steps"] == SMALL_STEPS
    assert (tmp_path / "demos" / name / "t" / "run.md").read_text() == base.render_md(record)


def test_unknown_demo_lists_the_names_and_exits_2():
    result = runner.invoke(app, ["run", "nonesuch"])
    assert result.exit_code == 2
    assert "unknown demo 'nonesuch'" in result.stderr
    for name in demos.names():
        assert name in result.stderr


@pytest.fixture
def two_demos(monkeypatch):
    registry = {}
    monkeypatch.setattr(base, "_DEMOS", registry)
    base.demo("good", "passes")(lambda seed, steps: base.DemoResult([base.check("c", "1 < 2", 1, 1 < 2)]))
    return registry


def test_run_all_exits_0_when_every_demo_passes(two_demos, tmp_path):
    result = runner.invoke(app, ["run-all", "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 0 and "1 passed, 0 failed" in result.stdout


def test_run_all_exits_1_when_a_demo_fails_or_crashes(two_demos, tmp_path):
    base.demo("bad", "fails")(lambda seed, steps: base.DemoResult([base.check("c", "2 < 1", 2, 2 < 1)]))

    def crash(seed, steps):
        raise RuntimeError("boom")

    base.demo("crash", "raises")(crash)
    result = runner.invoke(app, ["run-all", "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 1 and "1 passed, 2 failed" in result.stdout
    record = json.loads(next((tmp_path / "demos" / "crash").glob("*/summary.json")).read_text())
    assert record["status"] == "error" and "boom" in record["reason"]
    single = runner.invoke(app, ["run", "bad", "--artifacts-dir", str(tmp_path)])
    assert single.exit_code == 1
