"""Mutation testing: apply each curated mutant of `mutants.toml` to a private copy of the repo,
one at a time, run its targeted tests, and measure how many the test suite catches.

    uv run python tests/mutation/run.py [--only ID ...] [--area PREFIX] [--jobs N] [--list]

The working tree is never touched (other people edit it): each worker copies the repo's
tracked + untracked-not-ignored files into its own temporary directory and runs pytest there
with the repo's virtualenv python. In that copy `.cache/jax-tests` (the suite's persistent
compilation cache, keyed by the HLO itself, so a mutated program can only add entries) is a
symlink to the repo's, which keeps runs warm; `.cache/mgr` (corpus, tokenizer, token streams,
keyed by inputs, not by the code that built them) is restored from a snapshot before every
pytest run, so a mutated data pipeline can never poison a later run. Hypothesis is loaded with
a derandomised, deadline-free profile (`hypothesis_profile.py`) so a result is reproducible and
a slow shared machine cannot fake a kill.

Before the mutants, each distinct test selection runs once unmutated; a selection that fails
there makes its mutants "invalid" (reported, not counted). A built-in sanity mutant (making
`attention.names()` raise) must be caught, which proves the copy's modules are the ones
imported, not the editable install of the original repo. Results go to
`artifacts/mutation/<run_id>/{summary.json, run.md}`; the exit code is 1 if any mutant
survived unexpectedly or is stale (its `find` no longer occurs exactly once), else 0.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

import mutants as mlist  # noqa: E402
from report import render_md, score_line, summarise  # noqa: E402

REPO = mlist.REPO
PYTHON = REPO / ".venv" / "bin" / "python"
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-p", "hypothesis_profile"]
DEFAULT_TIMEOUT = 600.0
SANITY = mlist.Mutant(
    id="sanity.names-raises", file="attention/registry.py", find="def names() -> list[str]:\n",
    replace="def names() -> list[str]:\n    raise RuntimeError('mutation sanity: the copy is imported')\n",
    tests=("tests/attention/test_contract.py", "--co"),
    why="proves the copy's modules are imported, not the editable install of the repo")


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (REPO / f).is_file()})


class Worker:
    """One private copy of the repo in which mutants are applied and tests run."""

    def __init__(self, index: int, files: list[str]):
        self.root = Path(tempfile.mkdtemp(prefix=f"mgr-mutation-w{index}-"))
        self.repo = self.root / "repo"
        for f in files:
            dst = self.repo / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst)
        cache = self.repo / ".cache"
        cache.mkdir(exist_ok=True)
        (REPO / ".cache" / "jax-tests").mkdir(parents=True, exist_ok=True)
        (cache / "jax-tests").symlink_to(REPO / ".cache" / "jax-tests", target_is_directory=True)
        self.data_snapshot = self.root / "mgr-cache"
        if (REPO / ".cache" / "mgr").is_dir():
            shutil.copytree(REPO / ".cache" / "mgr", self.data_snapshot, symlinks=True,
                            ignore=shutil.ignore_patterns("*.tmp"))
        else:
            self.data_snapshot.mkdir()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.repo), str(mlist.HERE)]),
                    "PYTHONDONTWRITEBYTECODE": "1",  # a same-size edit within a second must not reuse a .pyc
                    "MGR_CACHE_DIR": str(cache / "mgr")}
        self.env.pop("PYTHONSAFEPATH", None)

    def imported_from_copy(self) -> tuple[bool, str]:
        code = "import attention, core, mgr, optim; print('\\n'.join(m.__file__ for m in (attention, core, mgr, optim)))"
        out = subprocess.run([str(PYTHON), "-c", code], cwd=self.repo, env=self.env,
                             capture_output=True, text=True)
        paths = out.stdout.split()
        ok = out.returncode == 0 and len(paths) == 4 and all(
            Path(p).resolve().is_relative_to(self.repo.resolve()) for p in paths)
        return ok, out.stdout + out.stderr

    def pytest(self, args, timeout: float) -> dict:
        """Run pytest on `args` in the copy: {'rc', 'seconds', 'timeout', 'detail'}."""
        shutil.rmtree(self.repo / ".cache" / "mgr", ignore_errors=True)
        shutil.copytree(self.data_snapshot, self.repo / ".cache" / "mgr", symlinks=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(PYTHON), *PYTEST, *args], cwd=self.repo, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own group: a hang is killed whole
        try:
            out, timed_out = proc.communicate(timeout=timeout)[0], False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, timed_out = proc.communicate()[0], True
        return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
                "timeout": timed_out, "detail": first_failure(out or "")}

    def run_mutant(self, m: mlist.Mutant, timeout: float) -> dict:
        path = self.repo / m.file
        original = path.read_text(encoding="utf-8")
        path.write_text(mlist.apply(m, original), encoding="utf-8")
        try:
            return self.pytest(list(m.tests), m.timeout or timeout)
        finally:
            path.write_text(original, encoding="utf-8")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def first_failure(output: str) -> str:
    """The first FAILED/ERROR line of pytest's short summary, else the last output line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("FAILED ", "ERROR ")):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def select(all_mutants, only, area):
    chosen = all_mutants
    if only:
        unknown = set(only) - {m.id for m in all_mutants}
        if unknown:
            raise SystemExit(f"unknown mutant id(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in chosen if m.id in only]
    if area:
        chosen = [m for m in chosen if any(m.id.startswith(a) or m.file.startswith(a) for a in area)]
    return chosen


def list_mutants(chosen) -> int:
    stale = 0
    for m in chosen:
        n = mlist.occurrences(m)
        flag = "" if n == 1 else f"  STALE (find occurs {n} times)"
        stale += n != 1
        print(f"{m.id:32} {m.file:32} {' '.join(m.tests)}{flag}")
    print(f"{len(chosen)} mutants, {stale} stale")
    return 1 if stale else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutant ids")
    ap.add_argument("--area", nargs="+", metavar="PREFIX", help="mutant id or file path prefix")
    ap.add_argument("--jobs", type=int, default=1, help="parallel workers (one repo copy each)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per pytest run")
    ap.add_argument("--list", action="store_true", help="list the mutants and check they apply")
    args = ap.parse_args(argv)
    chosen = select(mlist.load(), args.only, args.area)
    if args.list:
        return list_mutants(chosen)

    from mgr.runtime import artifacts, env, runs

    run_id, t_start = runs.new_run_id(), time.perf_counter()
    git = env.git_info(REPO)  # of the tree the copies are taken from, now
    files = repo_files()
    workers = [Worker(i, files) for i in range(max(1, args.jobs))]
    try:
        ok, where = workers[0].imported_from_copy()
        if not ok:
            raise SystemExit(f"the copy's modules are not the ones imported:\n{where}")
        results = {}
        for m in chosen:  # the apply check, against the snapshot the workers hold
            n = mlist.occurrences(m, workers[0].repo)
            if n != 1:
                results[m.id] = {"status": "stale", "detail": f"find occurs {n} times"}
        live = [m for m in chosen if m.id not in results]
        selections = {tuple(m.tests) for m in [SANITY, *live]}
        pool = queue.Queue()
        for w in workers:
            pool.put(w)

        def on_worker(fn, *a):
            w = pool.get()
            try:
                return fn(w, *a)
            finally:
                pool.put(w)

        def clean(w, s):
            r = w.pytest(list(s), args.timeout)
            print(f"baseline {'ok  ' if r['rc'] == 0 else 'FAIL'} {r['seconds']:6.1f}s  {' '.join(s)}"
                  + ("" if r["rc"] == 0 else f"  {r['detail']}"), flush=True)
            return r

        with ThreadPoolExecutor(len(workers)) as ex:
            base = dict(zip(selections, ex.map(lambda s: on_worker(clean, s), selections)))
            if base[SANITY.tests]["rc"] != 0:
                raise SystemExit("the sanity selection fails on clean code: cannot check imports")
            sanity = on_worker(lambda w: w.run_mutant(SANITY, args.timeout))
            if sanity["rc"] == 0:
                raise SystemExit("sanity mutant survived: the tests do not import the copy's modules")
            todo = [m for m in live if base[tuple(m.tests)]["rc"] == 0]
            for m in live:
                if m not in todo:
                    results[m.id] = {"status": "invalid", "detail": base[tuple(m.tests)]["detail"]}

            def one(w, m):
                r = w.run_mutant(m, args.timeout)
                status = "timeout" if r["timeout"] else "caught" if r["rc"] != 0 else "survived"
                print(f"{status:8} {r['seconds']:6.1f}s  {m.id}  {r['detail'] if status != 'survived' else ''}",
                      flush=True)
                return m.id, {**r, "status": status}

            for mid, r in ex.map(lambda m: on_worker(one, m), todo):
                results[mid] = r
    finally:
        for w in workers:
            w.close()

    summary = summarise(chosen, results, run_id=run_id, seconds=time.perf_counter() - t_start,
                        meta={"git": git, "command": env.command_line(),
                              "versions": env.versions(), "jobs": len(workers),
                              "sanity": {"id": SANITY.id, "caught": True, "detail": sanity["detail"]}})
    out = REPO / "artifacts" / "mutation" / run_id
    artifacts.write_json(out / "summary.json", summary)
    artifacts.atomic_write(out / "run.md", render_md(artifacts.as_recorded(summary)))
    print(render_md(summary))
    print(score_line(summary))
    print(f"written: {out.relative_to(REPO)}/summary.json, run.md")
    return 1 if summary["counts"]["unexpected_survivors"] or summary["counts"]["stale"] else 0


if __name__ == "__main__":
    sys.exit(main())
