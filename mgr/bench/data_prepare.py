"""`mgr data prepare` on a generated mixed input of --gb gigabytes: peak RSS, wall time, MB/s.

The input is deterministic from --seed: prose in English, Polish, German, French and Spanish and
code in Python, Bash, SQL and Go, as .txt/.md/.py/.sh/.sql/.go files in a directory tree, .jsonl
(with invalid lines, read with --on-bad-line skip), .csv and .parquet, with exact and near
duplicates and empty rows (the length filter) among them. `mgr data prepare` runs in a fresh
process; its peak resident set is its own VmHWM read at exit (see `inference.peak_rss_bytes`),
cross-checked by polling /proc/PID/status every 0.2 s, and its CPU time (user + system, from
wait4) is reported beside the wall time, which other load on the machine stretches.

    uv run python -m mgr.bench.data_prepare              # 1 GB (about 1.1 GB of disk for the input,
    uv run python -m mgr.bench.data_prepare --gb 0.05    # as much again for the output): quick check

Writes artifacts/bench/data_prepare/<run_id>/{summary.json, run.md} and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mgr.bench.inference import proc_status_bytes
from mgr.bench.process import MGR_REPORTING_PEAK_RSS
from mgr.runtime import artifacts

WORDS = {
    "en": "the of and to in is that it was for on are with as his they at be this from have or by one had "
          "not but what all were when we there can an your which their said if do will each about how up "
          "out them then she many some so these would other into has more her two like him see time".split(),
    "pl": "się nie jest że na to w z do jak ale co tak już czy po przez który może tylko być jego będzie "
          "kiedy bardzo wszystko gdzie dzień żeby łódź źródło przyjaciel książka miasto rzeka góry "
          "mówić pisać wiedzieć chcieć dobrze świat życie ręka oczy dziecko kobieta mężczyzna".split(),
    "de": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an "
          "werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum "
          "straße größe müssen können".split(),
    "fr": "le de un être et à il avoir ne je son que se qui ce dans en du elle au pour pas vous par sur "
          "faire plus dire me on mon lui nous comme mais pouvoir avec tout aller voir bien où sans "
          "déjà très été français".split(),
    "es": "el la de que y a en un ser se no haber por con su para como estar tener le lo todo pero más "
          "hacer o poder decir este ir otro ese si me ya ver porque dar cuando él muy sin vez mucho "
          "año niño también".split(),
}
NAMES = "user order item total price count value name index result buffer config path status key".split()


def _sentence(rng: random.Random, lang: str) -> str:
    words = rng.choices(WORDS[lang], k=rng.randint(6, 16))
    return " ".join(words).capitalize() + rng.choice(".!?.")


def _snippet(rng: random.Random, kind: str) -> str:
    a, b, c = rng.sample(NAMES, 3)
    n = rng.randint(1, 999)
    if kind == "python":
        return (f"def {a}_{b}_{n}({c}, {b}=None):\n    \"\"\"Return the {a} of {c}.\"\"\"\n    if {b} is None:\n"
                f"        {b} = []\n    for {a} in {c}:\n\t    {b}.append({a} * {n})\n    return {b}\n\n")
    if kind == "bash":
        return (f"{a}_{n}() {{\n  local {b}=\"$1\"\n  if [ -z \"${b}\" ]; then\n    echo \"no {b}\" >&2\n"
                f"    return {n % 7 + 1}\n  fi\n  for {c} in \"$@\"; do\n    printf '%s\\n' \"${c}\"\n  done\n}}\n\n")
    if kind == "sql":
        return (f"CREATE TABLE {a}_{n} (\n    id INTEGER PRIMARY KEY,\n    {b} TEXT NOT NULL,\n    {c} NUMERIC\n);\n"
                f"INSERT INTO {a}_{n} ({b}, {c}) VALUES ('{a}', {n});\n"
                f"SELECT {b}, SUM({c}) FROM {a}_{n} WHERE {c} > {n // 2} GROUP BY {b};\n\n")
    return (f"func {a.capitalize()}{n}({b} []int, {c} string) (int, error) {{\n\ttotal := 0\n"
            f"\tfor _, v := range {b} {{\n\t\tif v > {n} {{\n\t\t\treturn 0, fmt.Errorf(\"%s: %d\", {c}, v)\n"
            f"\t\t}}\n\t\ttotal += v\n\t}}\n\treturn total, nil\n}}\n\n")


_HEAD = {"python": "import os\nfrom typing import Any\n\n", "bash": "#!/usr/bin/env bash\nset -euo pipefail\n\n",
         "sql": "-- schema\n", "go": "package main\n\nimport (\n\t\"fmt\"\n)\n\n"}
KINDS = ("prose",) * 5 + ("python", "python", "bash", "sql", "go")


class Docs:
    """Documents from pools of pre-built sentences and snippets (building text word by word would
    make the generator, not `mgr data prepare`, the slow part of the benchmark)."""

    def __init__(self, seed: int, pool: int = 3000):
        self.rng = random.Random(seed)
        self.sent = {lang: [_sentence(self.rng, lang) for _ in range(pool)] for lang in WORDS}
        self.code = {k: [_snippet(self.rng, k) for _ in range(pool)] for k in _HEAD}
        self.recent: list[str] = []
        self.n = 0

    def one(self, chars: int) -> str:
        rng, self.n = self.rng, self.n + 1
        if self.recent and rng.random() < 0.04:  # exact or near copy of a recent document
            old = rng.choice(self.recent)
            return old if rng.random() < 0.5 else old + " " + rng.choice(self.sent["en"])
        kind = rng.choice(KINDS)
        if kind == "prose":
            lang = rng.choice(("pl", "pl", "en", "de", "fr", "es"))
            parts = [f"Nr {self.n}."]
            while sum(map(len, parts)) < chars:
                parts.append(" ".join(rng.choices(self.sent[lang], k=5)) + ("\n\n" if rng.random() < 0.3 else " "))
        else:
            parts = [_HEAD[kind], f"{'--' if kind == 'sql' else '//' if kind == 'go' else '#'} file {self.n}\n"]
            while sum(map(len, parts)) < chars:
                parts.extend(rng.choices(self.code[kind], k=4))
        text = "".join(parts)
        if len(self.recent) < 64:
            self.recent.append(text)
        else:
            self.recent[rng.randrange(64)] = text
        return text

    def size(self) -> int:  # document lengths spread over two orders of magnitude (200 B .. 20 kB)
        return int(200 * 100 ** self.rng.random())


def generate(root: Path, total_bytes: int, seed: int) -> dict:
    """Write the mixed input under root; return bytes per format."""
    docs = Docs(seed)
    share = {"tree": 0.25, "jsonl": 0.35, "csv": 0.15, "parquet": 0.25}
    written = dict.fromkeys(share, 0)
    tree = root / "tree"
    ext = {"prose": ".md", "python": ".py", "bash": ".sh", "sql": ".sql", "go": ".go"}
    i = 0
    while written["tree"] < share["tree"] * total_bytes:  # whole files: 2-200 kB documents
        text = docs.one(int(docs.size() * 10))
        kind = "prose" if text.startswith("Nr ") else next(k for k, h in _HEAD.items() if text.startswith(h))
        p = tree / f"d{i // 200:03d}" / (f"f{i:05d}" + (".txt" if kind == "prose" and i % 2 else ext[kind]))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        written["tree"] += len(text.encode())
        i += 1
    part = 0
    while written["jsonl"] < share["jsonl"] * total_bytes:
        with open(root / f"rows_{part:03d}.jsonl", "w", encoding="utf-8") as f:
            for n in range(20_000):
                if written["jsonl"] >= share["jsonl"] * total_bytes:
                    break
                line = json.dumps({"id": n, "text": docs.one(docs.size())}, ensure_ascii=False) + "\n"
                if n % 5000 == 17:
                    line = '{"id": ' + line[7:40] + "\n"  # a broken export line
                f.write(line)
                written["jsonl"] += len(line.encode())
        part += 1
    with open(root / "export.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        n = 0
        while written["csv"] < share["csv"] * total_bytes:
            body = "" if n % 1000 == 5 else docs.one(docs.size())  # empty cells: too short
            w.writerow([n, body])
            written["csv"] += len(body.encode()) + 8
            n += 1
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Uncompressed, so that the input's size on disk is its text (the pooled text compresses well).
    with pq.ParquetWriter(root / "table.parquet", pa.schema([("body", pa.string())]), compression="none") as w:
        while written["parquet"] < share["parquet"] * total_bytes:
            rows = [docs.one(docs.size()) for _ in range(2000)]
            w.write_table(pa.table({"body": rows}))
            written["parquet"] += sum(len(r.encode()) for r in rows)
    return written


def _rss(pid: int) -> int:
    return proc_status_bytes("VmRSS", pid=pid).get("VmRSS", 0)


def run_prepare(inputs: list[Path], out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", MGR_REPORTING_PEAK_RSS, "data", "prepare", *map(str, inputs), "--out", str(out),
           "--on-bad-line", "skip", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    polled, status = 0, 0
    stdout, stderr = [], []
    readers = [threading.Thread(target=lambda f, acc: acc.append(f.read()), args=(f, acc), daemon=True)
               for f, acc in ((proc.stdout, stdout), (proc.stderr, stderr))]  # no pipe fills up and blocks it
    for t in readers:
        t.start()
    while True:  # wait4: the child's own CPU time, robust to other load on the machine, unlike wall
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        polled = max(polled, _rss(proc.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = stderr[0]
    if proc.returncode != 0:
        lines = [ln for ln in stderr.splitlines() if not ln.startswith("MGR_PEAK_RSS")]
        raise SystemExit(f"error: mgr data prepare failed (exit {proc.returncode}): {(lines or ['?'])[-1]}")
    peak = next(json.loads(ln.split(" ", 1)[1]) for ln in stderr.splitlines() if ln.startswith("MGR_PEAK_RSS "))
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(peak["bytes"] / 2**20, 1),
            "polled_rss_mib": round(polled / 2**20, 1), "rss_source": peak["source"]}


def render(r: dict) -> str:
    c = r["card"]
    return "\n".join([
        "| input | documents read | kept | exact dup | near dup | shards | dedup state MiB | wall s | CPU s "
        "| MB per CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['input_mb']:,.0f} MB | {c['documents']['read']:,} | {c['documents']['kept']:,} | "
        f"{c['duplicates']['exact']:,} | {c['duplicates']['near']:,} | {len(c['shards'])} | "
        f"{c['dedup_state']['bytes'] / 2**20:.1f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
        f"{r['input_mb'] / r['cpu_s']:.2f} | {r['peak_rss_mib']:,.0f} |"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="input size in GB (10^9 bytes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="where the temp dir for input and output goes (default: the system's)")
    ap.add_argument("--artifacts-dir", default="artifacts")
    ap.add_argument("--keep", action="store_true", help="keep the generated input and output")
    args, extra = ap.parse_known_args(argv)  # anything else goes to `mgr data prepare`
    if args.gb <= 0:
        raise SystemExit("error: --gb must be positive")
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mgr-data-bench-", dir=args.work))
    try:
        t0 = time.perf_counter()
        written = generate(work / "input", int(args.gb * 1e9), args.seed)
        gen_s = time.perf_counter() - t0
        inputs = sorted((work / "input").iterdir())
        size = sum(p.stat().st_size for p in (work / "input").rglob("*") if p.is_file())
        r = run_prepare(inputs, work / "out", ["--column", "body", *extra])
        r.update(input_mb=size / 1e6, mb_per_s=size / 1e6 / r["wall_s"], generate_s=round(gen_s, 1),
                 written=written, args=extra, seed=args.seed,
                 card=json.loads((work / "out" / "dataset.json").read_text()))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = render(r)
    r["card"].pop("inputs")  # thousands of generated files: their digests say nothing here
    artifacts.write_bench(Path(args.artifacts_dir), "data_prepare", r,
                          f"mgr data prepare, {args.gb} GB generated input", text)


if __name__ == "__main__":
    main()
