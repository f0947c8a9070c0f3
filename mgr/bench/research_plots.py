"""The research report's plots, as PNG bytes drawn from the report.json content alone.

Each plot either draws from the recorded evidence or is skipped with a stated reason (no data
for it): a skipped plot is named in the report's text rather than silently missing.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

MAX_PANELS = 12  # beyond this a grid of panels is unreadable; the rest are named in the title


def render(report: dict) -> list[dict]:
    """[{"name", "file", "title", "png": bytes | None, "skipped": reason | None}] for the three
    plots: accuracy against decoding state, metric against budget, learning-rate sensitivity."""
    out = []
    for name, title, draw in (("state_accuracy", "accuracy against decoding state bytes", state_plot),
                              ("scaling", "metric against FLOPs budget, with fitted power laws", _scaling),
                              ("lr_sensitivity", "learning-rate sensitivity on the tuning slice", _lr)):
        png, skipped = draw(report)
        out.append({"name": name, "file": f"report_{name}.png", "title": title, "png": png, "skipped": skipped})
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display anywhere this runs (CI, the device machine)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No Software tag: the PNG then carries no URL, and the same figure gives the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _grid(n: int, title: str):
    plt = _plt()
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig, list(axes.flat[:n])


def state_plot(report: dict):
    """Zoology's recall-against-state plot: one point per arm per probe task (its largest budget)."""
    top: dict[tuple, dict] = {}
    for r in report["rows"]:
        if not (r.get("state_bytes") and r["higher_is_better"] and r["score"]["mean"] is not None):
            continue
        key = (r["suite"], r["task"], r["arm"])
        if key not in top or r["budget"] > top[key]["budget"]:
            top[key] = r
    if not top:
        return None, "no row has both a decoding-state size and an accuracy (probe suites only)"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for task in dict.fromkeys(k[1] for k in top):
        pts = [r for k, r in top.items() if k[1] == task]
        ax.errorbar([r["state_bytes"] for r in pts], [r["score"]["mean"] for r in pts],
                    yerr=[r["score"]["ci95"] or 0.0 for r in pts], fmt="o", ms=4, capsize=2, label=task)
        for r in pts:
            ax.annotate(r["label"], (r["state_bytes"], r["score"]["mean"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("decoding state per sequence (bytes, log scale)")
    ax.set_ylabel("accuracy (reported slice, ± 95% CI)")
    ax.set_title("accuracy against decoding state (largest budget per arm)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig), None


def _scaling(report: dict):
    """Per (suite, task) panel: each arm's score against budget, and its power law where fitted."""
    by: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in report["rows"]:
        if r["score"]["mean"] is not None and r["budget"]:
            by[(r["suite"], r["task"])][r["label"]].append(r)
    panels = [k for k, arms in by.items() if any(len({r["budget"] for r in rs}) >= 2 for rs in arms.values())]
    if not panels:
        return None, "every task was run at a single budget, so there is no curve to draw"
    fits = {(f["suite"], f["task"], f["label"]): f for f in report["fits"]}
    fig, axes = _grid(min(len(panels), MAX_PANELS), _title("metric against budget", panels))
    for ax, key in zip(axes, panels):
        metric = None
        for label, rs in by[key].items():
            rs = sorted(rs, key=lambda r: r["budget"])
            metric = rs[0]["metric"]
            line = ax.errorbar([r["budget"] for r in rs], [r["score"]["mean"] for r in rs],
                               yerr=[r["score"]["ci95"] or 0.0 for r in rs], fmt="o", ms=4, capsize=2, label=label)
            fit = fits.get((*key, label))
            if fit and fit.get("a") is not None and fit.get("b") is not None:
                lo, hi = min(p[0] for p in fit["points"]), max(p[0] for p in fit["points"])
                xs = [lo * (hi / lo) ** (i / 40) for i in range(41)]
                q = [fit["a"] * x ** fit["b"] for x in xs]
                # the fit is of the loss, or of the error 1 - accuracy: draw it as the metric
                ys = [1 - v for v in q] if str(fit.get("quantity", "")).startswith("error") else q
                ax.plot(xs, ys, "--", lw=1, color=line[0].get_color(),
                        label=f"{label} fit, b = {fit['b']:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("XLA-counted FLOPs per run (log)")
        ax.set_ylabel(f"{metric} (± 95% CI)")
        ax.set_title(_where(report, key[0], key[1]), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig), None


def _lr(report: dict):
    """Per (suite, task, budget) panel: each arm's tuning-slice score against the learning rate."""
    def curve(r):
        return [(g["lr"], g["tune"]) for g in r.get("lr_grid") or [] if g["tune"]["mean"] is not None]

    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in report["rows"]:
        if len(curve(r)) >= 2:
            by[(r["suite"], r["task"], r["budget"])].append(r)
    if not by:
        return None, "no arm has tuning-slice scores at two or more learning rates"
    panels = list(by)
    fig, axes = _grid(min(len(panels), MAX_PANELS), _title("tuning-slice score against learning rate", panels))
    for ax, key in zip(axes, panels):
        for r in by[key]:
            pts = sorted(curve(r))
            line = ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts],
                               yerr=[p[1]["ci95"] or 0.0 for p in pts], marker="o", ms=3, capsize=2,
                               label=f"{r['label']} (spread {r['sensitivity']:.2g})"
                               if r.get("sensitivity") is not None else r["label"])
            best = next((p for p in pts if p[0] == r.get("best_lr")), None)
            if best:  # the chosen learning rate, as a star on its curve
                ax.plot([best[0]], [best[1]["mean"]], "*", ms=10, color=line[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log)")
        ax.set_ylabel(f"{by[key][0]['metric']} on the tuning slice")
        ax.set_title(f"{_where(report, key[0], key[1])} at {key[2]:.3g} FLOPs", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig), None


def _where(report: dict, suite: int, task: str) -> str:
    """A panel's task, with its suite's id when the report spans several suites."""
    return f"{report['suites'][suite]['run_id']}: {task}" if len(report["suites"]) > 1 else task


def _title(what: str, panels: list) -> str:
    extra = len(panels) - MAX_PANELS
    return what + (f" (first {MAX_PANELS} panels; {extra} more in report.json)" if extra > 0 else "")
