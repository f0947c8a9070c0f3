"""report.html: the research report as one self-contained page.

Inline CSS, every plot embedded as a `data:image/png;base64,...` image, no external URL, and all
text from records escaped. A small inline script records into the DOM (the hidden `#mgr-check`
element) how many images the page has, how many decoded, and every script error, so a headless
browser's dumped DOM shows whether the page actually renders (tests/test_research_report.py).
"""

from __future__ import annotations

import base64
from html import escape

from mgr.bench import research

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:12.5px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td:nth-child(2){text-align:left}
tr.sig td{background:#fff4d6;font-weight:600}tr.base td{color:#555}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
code{background:#f4f4f4;padding:0 3px}.skipped{color:#a33}
ul.prov{font-size:12.5px}
"""

# Registered first thing in <head>, before any other script can fail. Only ErrorEvents (script
# errors) are counted here: a broken image fires a plain `error` Event on the element, which the
# image count below reports separately.
HEAD_SCRIPT = """
window.__mgrErrors = [];
window.addEventListener("error", function (e) {
  if (typeof ErrorEvent !== "undefined" && e instanceof ErrorEvent) {
    window.__mgrErrors.push(String(e.message || "error") + " @" + (e.lineno || "?"));
  }
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__mgrErrors.push("unhandled rejection: " + String(e.reason));
});
"""

# Runs at load, and once more just after, so an error thrown during load is counted too.
CHECK_SCRIPT = """
(function () {
  function check() {
    var imgs = document.images, loaded = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++;
    }
    var el = document.getElementById("mgr-check");
    el.setAttribute("data-images", String(imgs.length));
    el.setAttribute("data-loaded", String(loaded));
    el.setAttribute("data-errors", String(window.__mgrErrors.length));
    el.setAttribute("data-done", "1");
    el.textContent = window.__mgrErrors.join("\\n");
  }
  function later() { check(); setTimeout(check, 50); }
  if (document.readyState === "complete") later(); else window.addEventListener("load", later);
})();
"""


def _e(x) -> str:
    return escape(str(x), quote=True)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in research.COLUMNS)
    body = []
    for r in rows:
        v = r.get("vs_baseline") or {}
        cls = "sig" if v.get("significant") else ("base" if r["is_baseline"] else "")
        cells = "".join(f"<td>{_e(c)}</td>" for c in research.table_cells(r))
        links = " ".join(f'<a href="{_e(p)}">{_e(research.source_label(p, i))}</a>'
                         for i, p in enumerate(r["sources"])) or "–"
        sig = int(bool(v.get("significant")))
        body.append(f'<tr class="{cls}" data-significant="{sig}">{cells}<td>{links}</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(report: dict, plots: list[dict]) -> str:
    """The page, from the report.json content and the plots' PNG bytes (`research_plots.render`)."""
    parts = ["<h1>Research report</h1>",
             f"<p>Generated {_e(report['generated_at'])} from {len(report['suites'])} suite(s) by "
             f"<code>{_e(report['command'])}</code>. Scores are on the reported slice at the learning rate "
             "chosen on the tuning slice; tests are Welch tests against each suite's baseline, "
             f"Holm-corrected over the suite; highlighted rows have Holm p &lt; {research.ALPHA}.</p>",
             "<h2>Conclusions</h2>", _list(report["conclusions"] or ["none"])]
    for task, rs in research.tasks(report).items():
        better = "higher is better" if rs[0]["higher_is_better"] else "lower is better"
        parts += [f"<h2>Task <code>{_e(task)}</code>: {_e(rs[0]['metric'])} ({better})</h2>", _table(rs)]
    parts.append("<h2>Correctness gates</h2>")
    gates = [f"{g['attention']} ({report['suites'][g['suite']]['run_id']}): "
             + ("passed" if g["passed"] else f"FAILED: {g['reason']}") for g in report["gates"]]
    parts.append(_list(gates or ["none recorded"]))
    parts += ["<h2>Crossings</h2>", _list([f"{c['task']}: {c['arm']} and {c['other']} at about "
                                           f"{c['budget']:.3g} FLOPs" for c in report["crossings"]]
                                          or ["none found"])]
    parts.append("<h2>Plots</h2>")
    for p in plots:
        if p["png"] is None:
            parts.append(f'<p class="skipped">{_e(p["title"])}: not drawn ({_e(p["skipped"])})</p>')
        else:
            data = base64.b64encode(p["png"]).decode("ascii")
            parts.append(f'<figure><img alt="{_e(p["title"])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_e(p['title'])}</figcaption></figure>")
    parts.append("<h2>Provenance</h2>")
    for s in report["suites"]:
        parts += [f"<h3>Suite <code>{_e(s['run_id'])}</code></h3>",
                  '<ul class="prov">' + "".join(f"<li>{_e(x)}</li>" for x in research.provenance_lines(s)) + "</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<script>{HEAD_SCRIPT}</script><title>mgr research report</title><style>{CSS}</style></head>\n"
            f"<body>\n{''.join(parts)}\n<div id=\"mgr-check\" hidden></div>\n<script>{CHECK_SCRIPT}</script>\n"
            "</body></html>\n")
