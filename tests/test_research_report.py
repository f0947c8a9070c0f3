"""The research report (`mgr.bench.research`, `mgr report`): its contents from synthetic suite
summaries that follow `mgr.bench.evidence`'s schema, and report.html rendered in real headless
Chromium (every image decodes, no script error, no external URL)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgr.bench import research
from mgr.cli import app

BASE, BRAID, TROP = "standard-adamw-cosine", "braid-adamw-cosine", "tropical-adamw-cosine"
BUDGETS = (1e10, 3e10)
T975 = {2: 12.706, 3: 4.303}  # two-sided 95% t quantiles for n - 1 = 1, 2


def desc(xs):
    n, m = len(xs), sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return {"n": n, "mean": m, "std": sd, "ci95": T975[n] * sd / math.sqrt(n)}


def row(suite, task, arm, budget, values, vs=None, *, metric="accuracy", state=None, lrs=(1e-3, 3e-3)):
    """One evidence row; writes the run records its `sources` name, so links can be resolved."""
    att, opt, sch = arm.rsplit("-", 2)
    prefix = f"{arm}/{task}/b_{budget:.3g}" if task != "lm" else f"{arm}/b_{budget:.3g}"
    sources = [f"{prefix}/lr_{lrs[-1]:g}/seed_{s}/summary.json" for s in range(len(values))]
    for src in sources:
        (suite / src).parent.mkdir(parents=True, exist_ok=True)
        (suite / src).write_text("{}")
    grid = [{"lr": lr, "tune": desc([v - 0.05 * (len(lrs) - 1 - i) for v in values]), "report": desc(values),
             "statuses": {"ok": len(values)}} for i, lr in enumerate(lrs)]
    return {"task": task, "metric": metric, "higher_is_better": metric == "accuracy", "arm": arm,
            "attention": att, "optimizer": opt, "schedule": sch, "budget": budget, "best_lr": lrs[-1],
            "lr_grid": grid, "sensitivity": 0.05 * (len(lrs) - 1), "score": desc(values), "values": values,
            "slices": {"test_64": desc(values)} if task != "lm" else {}, "vs_baseline": vs,
            "state_bytes": state, "steps": 100.0, "seeds": list(range(len(values))),
            "statuses": {"ok": len(values)}, "sources": sources}


def vs(diff, p_holm, g, sig, better=None):
    return {"baseline": BASE, "diff": diff, "p": p_holm / 4, "p_holm": p_holm, "significant": sig,
            "effect_size": g, "better": better}


def meta(run_id):
    return {"run_id": run_id, "generated_at": "2025-01-02T03:04:05+00:00",
            "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True},
            "versions": {"python": "3.11.2", "jax": "0.10.2"},
            "device": {"platform": "cpu", "kind": "cpu", "count": 1, "cpu_arch": "x86_64"},
            "command": f"mgr probe --run-id {run_id}"}


STATE = {BASE: 2 ** 20, BRAID: 2 ** 12, TROP: 2 ** 14}


def probe_suite(root: Path) -> Path:
    d = root / "probe" / "p1"
    d.mkdir(parents=True)
    rows = []
    for budget in BUDGETS:
        # state_tracking: braid clearly beats the baseline; tropical does not differ. mqar: nothing differs.
        rows += [row(d, "state_tracking", BASE, budget, [0.50, 0.52, 0.54], state=STATE[BASE]),
                 row(d, "state_tracking", BRAID, budget, [0.90, 0.91, 0.92], vs(0.39, 0.002, 4.1, True, True),
                     state=STATE[BRAID]),
                 row(d, "state_tracking", TROP, budget, [0.49, 0.55, 0.53], vs(0.003, 0.9, 0.05, False),
                     state=STATE[TROP])]
        rows += [row(d, "mqar", arm, budget, [0.7, 0.72, 0.74], None if arm == BASE else vs(0.001, 0.95, 0.02, False),
                     state=STATE[arm]) for arm in (BASE, BRAID, TROP)]
    # error = a * C^b through each arm's (flat) means: b slightly negative, as a real fit would be
    fits = [{"task": r["task"], "arm": r["arm"], "metric": "accuracy", "quantity": "error = 1 - accuracy",
             "a": (1 - r["score"]["mean"]) * 1e10 ** 0.01, "b": -0.01, "b_ci95": 0.01, "r2": 0.9,
             "points": [[b, 1 - r["score"]["mean"]] for b in BUDGETS]} for r in rows if r["budget"] == BUDGETS[0]]
    gates = {"standard": {"passed": True, "reason": None, "checks": {}},
             "braid": {"passed": True, "reason": None, "checks": {}},
             "tropical": {"passed": True, "reason": None, "checks": {}},
             "octonion": {"passed": False, "reason": "causality: position 3 depends on token 5 <future>",
                          "checks": {"causal": False}}}
    ev = {"rows": rows, "fits": fits, "crossings": [{"task": "mqar", "arm": TROP, "other": BASE, "budget": 2e10}],
          "gates": gates, "conclusions": []}
    (d / "summary.json").write_text(json.dumps({"schema_version": "mgr.probe.v1", "kind": "probe",
                                                "meta": meta("p1"), "baseline": BASE, "evidence": ev}))
    return d


def fixed_suite(root: Path) -> Path:
    d = root / "bench" / "fixed_flops" / "f1"
    d.mkdir(parents=True)
    rows = [row(d, "lm", BASE, 8e8, [3.10, 3.12, 3.11], metric="val_ce", lrs=(1e-2,)),
            row(d, "lm", "reversible-adamw-cosine", 8e8, [3.20, 3.25, 3.22],
                {**vs(0.11, 0.01, 5.2, True, False)}, metric="val_ce", lrs=(1e-2,))]
    ev = {"rows": rows, "fits": [], "crossings": [], "gates": {"standard": {"passed": True, "reason": None}},
          "conclusions": []}
    (d / "summary.json").write_text(json.dumps({"kind": "fixed_flops", "meta": meta("f1"), "baseline": BASE,
                                                "evidence": ev}))
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("research")
    suites = [probe_suite(root), fixed_suite(root)]
    out = root / "report"
    return out, research.write_report(suites, out), suites


def md_line(md: str, r: dict) -> str:
    """The one table line of row `r` in its task's section of report.md."""
    section = md.split(f"## Task `{r['task']}`", 1)[1].split("\n## ", 1)[0]
    cell = r["label"] + (" (baseline)" if r["is_baseline"] else "")
    (line,) = [x for x in section.splitlines() if x.startswith(f"| {r['budget']:.3g} | {cell} |")]
    return line


def test_report_md_and_json_carry_every_row_its_marks_conclusions_gates_and_links(built):
    out, report, suites = built
    md = (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text()) == report
    assert len(report["rows"]) == 12 + 2
    for r in report["rows"]:
        line = md_line(md, r)
        assert ("* better" in line or "* worse" in line) == bool(r["vs_baseline"] and r["vs_baseline"]["significant"])
        for src in r["sources"]:  # relative to out_dir, and each resolves to its run record
            assert not os.path.isabs(src) and (out / src).is_file() and f"](<{src}>)" in line
        assert r["sources"] and len(r["sources"]) == len(r["sources_in_suite"])
    text = report["conclusions"]
    (braid,) = [c for c in text if c.startswith(f"[p1] {BRAID} beats {BASE} on state_tracking at 3e+10")]
    assert "accuracy 0.91 ± 0.0248 vs 0.52 ± 0.0497, Δ +0.39, g = 4.1, Holm p = 0.002" in braid
    assert any("reversible-adamw-cosine is worse than" in c and "g = 5.2" in c and "Holm p = 0.01" in c for c in text)
    for budget in BUDGETS:
        assert f"[p1] mqar at {budget:.3g} FLOPs: no difference found at this budget" in " ".join(text)
    assert not any("state_tracking" in c and "no difference found" in c for c in text)
    assert any("octonion was gated out" in c and "position 3 depends on token 5" in c for c in text)
    assert "**failed**: causality: position 3 depends on token 5 \\<future>" in md  # not an HTML tag
    assert any("cross on mqar at about 2e+10" in c for c in text)
    for c in text:
        assert f"- {c}".replace("<", "\\<") in md
    for needle in ("run id: p1", "run id: f1", "git commit: 0123456789abcdef0123456789abcdef01234567 (dirty)",
                   "device: cpu (cpu) x1, x86_64", "jax 0.10.2", "generated (UTC): 2025-01-02T03:04:05+00:00",
                   "command: mgr probe --run-id p1"):
        assert needle in md
    for p in report["plots"]:
        assert p["skipped"] is None and (out / p["file"]).stat().st_size > 2000 and f"]({p['file']})" in md
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp file behind


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.check, self.imgs = None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.imgs += tag == "img"
        if attrs.get("id") == "mgr-check":
            self.check = attrs


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("MGR_REQUIRE_BROWSER") == "1":
            pytest.fail("MGR_REQUIRE_BROWSER=1 but neither chromium nor chromium-browser is on PATH")
        pytest.skip("no chromium or chromium-browser on PATH (apt-get install chromium; "
                    "MGR_REQUIRE_BROWSER=1 turns this skip into a failure)")
    return exe


def browser_check(page: Path, profile: Path) -> dict:
    """Load `page` in headless Chromium and read back what its inline check script recorded."""
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    c = dom.check or {}
    return {"done": c.get("data-done") == "1", "images": int(c.get("data-images", -1)),
            "loaded": int(c.get("data-loaded", -1)), "errors": int(c.get("data-errors", -1)), "img_tags": dom.imgs}


def external_refs(html: str) -> list[str]:
    refs = re.findall(r"""(?:src|href|action|srcset|poster)\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    bad = [r for r in refs if not r.startswith("data:image/png;base64,")
           and (re.match(r"^[a-z][a-z0-9+.-]*:", r, re.I) or r.startswith("//"))]
    return bad + re.findall(r"https?://|url\(|@import", html, re.I)


def test_report_html_renders_in_headless_chromium(built, tmp_path):
    out, report, _ = built
    html = (out / "report.html").read_text()
    assert external_refs(html) == []
    assert html.index("__mgrErrors") < html.index("<style>") < html.index("<body")  # handler first in <head>
    assert "&lt;future&gt;" in html and "<future>" not in html  # record text is escaped
    got = browser_check(out / "report.html", tmp_path / "profile")
    assert got["done"] and got["images"] == got["loaded"] == got["img_tags"] >= 3, got
    assert got["errors"] == 0, got
    assert html.count('class="sig"') == sum(bool(r["vs_baseline"] and r["vs_baseline"]["significant"])
                                            for r in report["rows"])


def test_browser_check_sees_a_broken_image_and_a_script_error(built, tmp_path):
    out, _, _ = built
    html = (out / "report.html").read_text()
    start = html.index("base64,") + len("base64,")
    broken = html[:start] + "AAAA" + html[start + 300:]  # the first image loses its PNG signature
    broken = broken.replace("</body>", "<script>throw new Error('injected');</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    got = browser_check(page, tmp_path / "profile")
    assert got["done"] and got["images"] == 3 and got["loaded"] == 2 and got["errors"] >= 1, got


def test_fixed_flops_summary_without_evidence_is_adapted_from_its_arms(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    arms = [{"arm": BASE, "val_ce": desc([3.1, 3.2]), "budget": 8e8, "best_lr": 1e-2, "sensitivity": None,
             "runs": [{"seed": 0, "status": "ok", "path": f"{BASE}/b_8e+08/lr_0.01/seed_0/summary.json"}],
             "delta_vs_baseline": None},
            {"arm": "reversible-adamw-cosine", "val_ce": desc([3.0, 3.05]), "budget": 8e8, "best_lr": 1e-2,
             "runs": [], "delta_vs_baseline": {"diff": -0.12, "welch": {"p_value": 0.01}, "p_holm": 0.01,
                                               "effect_size": -2.0, "significant": True}}]
    (d / "summary.json").write_text(json.dumps({"kind": "fixed_flops", "meta": meta("old"), "baseline": BASE,
                                                "bench": {"target_flops": 8e8}, "arms": arms}))
    report = research.write_report([d], d)
    assert [r["arm"] for r in report["rows"]] == [BASE, "reversible-adamw-cosine"]
    assert report["rows"][0]["sources"] == [f"{BASE}/b_8e+08/lr_0.01/seed_0/summary.json"]
    assert any("reversible-adamw-cosine beats" in c and "Holm p = 0.01" in c for c in report["conclusions"])
    skipped = {p["name"]: p["skipped"] for p in report["plots"]}
    assert all(skipped.values())  # no state, one budget, one lr: every plot skipped, with a reason
    md = (d / "report.md").read_text()
    assert "evidence from: arms" in md and "not drawn (every task was run at a single budget" in md


def test_cli_report_rerenders_a_fixed_flops_suite_and_refuses_other_directories(tmp_path, monkeypatch):
    import mgr.bench.report as suite_report

    src = fixed_suite(tmp_path)
    (src / "bench.json").write_text("{}")
    calls = []
    # The re-render itself is tests/test_bench.py's; here only that the command calls it first.
    monkeypatch.setattr(suite_report, "write_suite", lambda d: calls.append(d) or {"conclusions": {"text": ["re"]}})
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert calls == [src] and "re\n" in result.output and "research report conclusions:" in result.output
    assert (tmp_path / "out" / "report.html").is_file() and "report.md, report.html, report.json" in result.output
    result = runner.invoke(app, ["report", str(src)])  # --out defaults to the first DIR
    assert result.exit_code == 0 and (src / "report.md").is_file()
    result = runner.invoke(app, ["report", str(src), str(tmp_path)])
    assert result.exit_code == 2 and "is not a benchmark or probe suite" in result.output
    assert len(calls) == 2  # the bad directory was refused before anything was re-rendered
