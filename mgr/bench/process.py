"""The whole process at the reference's smoke configuration (C1), as a user runs it.

C1: batch 4, sequence 128, 2 layers, 2 heads, 2 kv heads, width 64, vocabulary 50304, 50 steps,
standard attention, AdamW (the reference project's own smoke test). Each repetition is a fresh
`mgr train` process; the figures are its wall time from start to exit (record written), its
peak resident set (VmHWM, read in the child at exit: see `inference.peak_rss_bytes`), the
train tokens/s its record reports, and the time to `import` the modules a run needs. The first
repetition warms the tokenizer, corpus, FLOPs and compilation caches; the table reports every
repetition so the cold/warm difference stays visible.

    uv run python -m mgr.bench.process              # 3 repetitions
    uv run python -m mgr.bench.process --reps 5

Writes artifacts/bench/process/<run_id>/{summary.json, run.md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mgr.runtime import artifacts

C1 = ["--n-layer", "2", "--n-head", "2", "--n-kv-head", "2", "--n-embd", "64", "--seq-len", "128",
      "--batch-size", "4", "--vocab-size", "50304", "--steps", "50", "--no-progress"]
# The child runs what the `mgr` script runs (`mgr.cli.main`: the allocator re-exec, then the
# Typer app) and reports its own high-water mark
# (`mgr.bench.data_prepare` measures `mgr data prepare` with it too).
MGR_REPORTING_PEAK_RSS = """
import atexit, json, sys
def _report():
    from mgr.bench.inference import peak_rss_bytes
    peak, source = peak_rss_bytes()
    sys.stderr.write("MGR_PEAK_RSS " + json.dumps({"bytes": peak, "source": source}) + "\\n")
atexit.register(_report)
from mgr.cli import main
sys.argv = ["mgr"] + sys.argv[1:]
main()
"""
_IMPORTS = ("from mgr.runtime import allocator; allocator.preload(); import time; t = time.perf_counter(); "
            "import mgr.train, mgr.data.pipeline; print(time.perf_counter() - t)")


def one_run(root: Path, run_id: str) -> dict:
    cmd = [sys.executable, "-c", MGR_REPORTING_PEAK_RSS, "train", *C1, "--artifacts-dir", str(root), "--run-id", run_id]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: the C1 run failed (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    peak = next(json.loads(line.split(" ", 1)[1]) for line in proc.stderr.splitlines()
                if line.startswith("MGR_PEAK_RSS "))
    record = json.loads((root / "train" / run_id / "summary.json").read_text())
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak["bytes"] / 2**20, 1),
            "rss_source": peak["source"], "tokens_per_second": record["results"]["tokens_per_second"],
            "compile_seconds": record["results"]["compile_seconds"],
            "val_ce_final": record["results"]["val_ce_final"], "allocator": record["meta"]["device"]["allocator"]}


def import_seconds() -> float:
    out = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, timeout=300)
    return round(float(out.stdout.strip()), 2)


def render(rows: list[dict], imports: float) -> str:
    lines = ["| repetition | wall s | peak RSS MiB | train tokens/s | compile s | val CE |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i}{' (cold caches)' if i == 1 else ''} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['tokens_per_second']:,.0f} | {r['compile_seconds']:.2f} | {r['val_ce_final']:.4f} |")
    warm = rows[1:] or rows
    lines.append("")
    lines.append(f"Warm median: {statistics.median(r['wall_s'] for r in warm):.1f} s wall, "
                 f"{statistics.median(r['peak_rss_mib'] for r in warm):.0f} MiB peak RSS, "
                 f"{statistics.median(r['tokens_per_second'] for r in warm):,.0f} train tokens/s; "
                 f"importing what a run needs: {imports:.2f} s; allocator: "
                 f"{', '.join(sorted({r.get('allocator', '?') for r in rows}))}.")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="fresh processes to time (the first warms caches)")
    ap.add_argument("--artifacts-dir", default="artifacts")
    args = ap.parse_args(argv)
    if args.reps < 1:
        raise SystemExit("error: --reps must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_run(Path(tmp), f"c1-{i}") for i in range(args.reps)]
    imports = import_seconds()
    text = render(rows, imports)
    artifacts.write_bench(Path(args.artifacts_dir), "process",
                          {"config": C1, "runs": rows, "import_seconds": imports}, "C1 whole process", text)


if __name__ == "__main__":
    main()
