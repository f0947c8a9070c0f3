"""One short real training run shared by the inference tests (export, generate, the CLI).

Trained once per test session by the project's entry point (`mgr.train.train`) on the tiny
data configuration every trainer test uses, so its corpus and tokenizer come from the same
cache entries.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TINY_DATA, tiny_model, tiny_train


@dataclass(frozen=True)
class TrainedRun:
    root: Path  # the artifacts directory
    run_id: str
    summary: dict

    @property
    def run_dir(self) -> Path:
        return self.root / "train" / self.run_id


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    from mgr.train import train

    root = tmp_path_factory.mktemp("artifacts")
    # Checkpoints at 8, 16 and 24: the newest two are kept, the best is step 24.
    summary = train(tiny_model(), TINY_DATA, tiny_train(steps=24), run_dir=root / "train" / "tiny",
                    artifacts_root=root)
    assert summary["status"] == "ok", summary["reason"]
    return TrainedRun(root, "tiny", summary)
