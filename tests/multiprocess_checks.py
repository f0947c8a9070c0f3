"""Training runs for tests/test_multiprocess.py, started in subprocesses (alone, or as every
process of a job under `mgr launch`):

- `losses OUT`: standard and tropical attention, 12 steps of tiny dimensions each, through
  `mgr.train.train` on every device of the job (and, in one process with several devices, on one
  device too). Process 0 writes OUT/losses.json (the metrics rows of each run, keyed
  `<algebra>/<processes>x<devices per process>` or `<algebra>/1x1`); every process writes
  OUT/rows.<process>.json: the rows of each batch it asked the data pipeline for.
- `train RUN_DIR [--resume] [--slow]`: the standard run of `losses`, with checkpoints every 4
  steps, in RUN_DIR; `--slow` makes every batch after the fifth take 0.25 s longer to read (so a
  test can kill a process mid-run).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TINY_DATA, tiny_model, tiny_train  # noqa: E402

from mgr.runtime import enable_compilation_cache, maybe_init_distributed  # noqa: E402

ALGEBRAS = ("standard", "tropical")
ROOT = Path(__file__).resolve().parent.parent


def _config(devices: int, **train):
    return tiny_train(steps=12, eval_every=6, checkpoint_every=4, log_every=1, devices=devices, **train)


def losses(out: Path) -> None:
    import jax

    from mgr.data import build_data
    from mgr.data.pipeline import Data
    from mgr.runtime import distributed
    from mgr.train import read_metrics, train

    asked = []
    real = Data.train_iterator

    def recording(self, seed, rows=None):
        asked.append(None if rows is None else [rows.start, rows.stop])
        return real(self, seed, rows=rows)

    Data.train_iterator = recording
    data = build_data(TINY_DATA)
    n, procs = jax.device_count(), jax.process_count()
    layouts = [(f"{procs}x{jax.local_device_count()}", n)] + ([("1x1", 1)] if procs == 1 and n > 1 else [])
    result = {"process_count": procs, "device_count": n, "runs": {}}
    for algebra in ALGEBRAS:
        for label, devices in layouts:
            run_dir = out / algebra / label
            s = train(tiny_model(attention=algebra), TINY_DATA, _config(devices, checkpoints=False),
                      run_dir=run_dir, artifacts_root=out, data=data)
            if distributed.is_primary():
                result["runs"][f"{algebra}/{label}"] = {"status": s["status"], "rows": read_metrics(run_dir)}
    (out / f"rows.{distributed.process_index()}.json").write_text(json.dumps(asked))
    if distributed.is_primary():
        (out / "losses.json").write_text(json.dumps(result))


def train_one(run_dir: Path, resume: bool, slow: bool) -> None:
    import jax

    from mgr.data.pipeline import Data
    from mgr.train import train

    if slow:
        real = Data.train_iterator

        class Slow:  # the grain iterator, with reads after the fifth slowed down
            def __init__(self, it):
                self.it, self.n = it, 0

            def __next__(self):
                self.n += 1
                if self.n > 5:
                    time.sleep(0.25)
                return next(self.it)

            def get_state(self):
                return self.it.get_state()

            def set_state(self, state):
                self.it.set_state(state)

        def slowed(self, seed, rows=None):
            return Slow(real(self, seed, rows=rows))

        Data.train_iterator = slowed
    s = train(tiny_model(attention="standard"), TINY_DATA, _config(jax.device_count()), run_dir=run_dir,
              artifacts_root=run_dir.parent, resume=resume)
    print(f"status {s['status']} steps {s['results'].get('steps_completed')}", flush=True)


if __name__ == "__main__":
    enable_compilation_cache(ROOT / ".cache" / "jax-tests")
    maybe_init_distributed()
    mode, path = sys.argv[1], Path(sys.argv[2])
    if mode == "losses":
        losses(path)
    else:
        train_one(path, "--resume" in sys.argv, "--slow" in sys.argv)
