"""Loading weights for inference: from a training run's checkpoint, or from an export.

A run is `--run RUN_ID` under `<artifacts>/train/`, or a run directory. Its `summary.json`
gives the model config; only the parameters are read from the orbax checkpoint (a partial
restore into a template built from that config, so the optimizer state is never loaded):
`best` is `checkpoints/best/`, `final` the newest periodic step, an integer that step. The
tokenizer is the run's `tokenizer.model` (saved by training), or, for runs trained before that
file existed, the tokenizer cache entry named by the digest in the record. An export needs
none of this: `load_engine(model_dir=...)` never imports the trainer or orbax.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import MgrError
from mgr.config import ModelConfig
from mgr.infer.engine import DEFAULT_CHUNK, Engine
from mgr.infer.weights import Layout

CHECKPOINT_NAMES = ("best", "final")  # or a step number


@dataclass
class RunWeights:
    """The float32 parameters of one checkpoint of a run, with what produced them."""

    run_dir: Path
    summary: dict
    model_config: ModelConfig
    weights: dict[str, np.ndarray]
    tokenizer: Any
    step: int
    checkpoint: str  # "best", "final" or the step as given


def resolve_run_dir(run: str | Path, artifacts_dir: Path) -> Path:
    """A run directory: `run` itself if it is one, else `<artifacts_dir>/train/<run>`."""
    from mgr.runtime.runs import check_run_id

    path = Path(run)
    if (path / "summary.json").is_file():
        return path
    candidate = Path(artifacts_dir) / "train" / str(run)
    try:
        check_run_id(str(run))
    except MgrError:
        candidate = None
    if candidate is not None and candidate.is_dir():
        if not (candidate / "summary.json").is_file():
            raise MgrError(f"run '{run}' has no summary.json in {candidate}; it never started training")
        return candidate
    raise MgrError(f"no training run '{run}': not a run directory, and {Path(artifacts_dir) / 'train' / str(run)} "
                   "does not exist (see --artifacts-dir)")


def read_summary(run_dir: Path) -> tuple[dict, ModelConfig]:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return summary, ModelConfig.from_dict(summary["config"]["model"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise MgrError(f"unreadable {run_dir.name}/summary.json ({type(e).__name__})") from None


def _steps(directory: Path) -> list[int]:
    import orbax.checkpoint as ocp

    return sorted(ocp.step.checkpoint_steps(directory)) if directory.is_dir() else []


def checkpoint_dir(run_dir: Path, checkpoint: str) -> tuple[Path, int]:
    """The step directory that `checkpoint` (best, final or a step number) names, and its step."""
    name = run_dir.name
    periodic, best = _steps(run_dir / "checkpoints"), _steps(run_dir / "checkpoints" / "best")
    if not periodic and not best:
        raise MgrError(f"run '{name}' has no checkpoints (trained without them, or stopped before the "
                       "first); nothing to load")
    listing = ", ".join(map(str, periodic)) + (f"; best: {', '.join(map(str, best))}" if best else "")
    text = str(checkpoint).strip()
    if text == "best":
        if not best:
            raise MgrError(f"run '{name}' has no best checkpoint (steps: {listing})")
        return run_dir / "checkpoints" / "best" / str(best[-1]), best[-1]
    if text == "final":
        if not periodic:
            raise MgrError(f"run '{name}' has no periodic checkpoint for 'final' (steps: {listing})")
        return run_dir / "checkpoints" / str(periodic[-1]), periodic[-1]
    if not text.isdigit():
        raise MgrError(f"unknown checkpoint '{checkpoint}': use {', '.join(CHECKPOINT_NAMES)} or a step "
                       f"number (run '{name}' has steps {listing})")
    step = int(text)
    if step in periodic:
        return run_dir / "checkpoints" / str(step), step
    if step in best:
        return run_dir / "checkpoints" / "best" / str(step), step
    raise MgrError(f"run '{name}' has no checkpoint at step {step} (steps: {listing})")


def _restore_params(step_dir: Path, layout: Layout, what: str) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    _, abstract = nnx.split(layout.abstract_model, nnx.Param)
    item = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)}
    # Host arrays: no sharding to look up, and the engine places them itself.
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(step_dir.absolute() / "state", args=ocp.args.PyTreeRestore(
                item=item, restore_args=args, partial_restore=True))
        weights = layout.flatten(restored["params"])
        layout.check(weights, what)
    except Exception:  # orbax raises many types for damaged or mismatched files
        raise MgrError(f"cannot read the parameters of {what}") from None
    return {n: np.asarray(w, np.float32) for n, w in weights.items()}


def run_tokenizer(run_dir: Path, summary: dict, model_cfg: ModelConfig):
    """The tokenizer a run was trained with."""
    from mgr.data.tokenizer import Tokenizer
    from mgr.runtime.paths import cache_dir

    try:
        facts = summary["config"]["dataset"]["tokenizer"]
        digest, kind = str(facts["digest"]), str(facts["type"])
    except (KeyError, TypeError):
        raise MgrError(f"run '{run_dir.name}' records no tokenizer in its summary.json") from None
    path = run_dir / "tokenizer.model"
    if not path.is_file():  # runs trained before training saved it: the content-addressed cache
        path = cache_dir() / "tokenizers" / f"{digest}.model"
    if not path.is_file():
        raise MgrError(f"run '{run_dir.name}' has no tokenizer.model, and tokenizer {digest} is no longer "
                       "in the tokenizer cache; rebuild it by training any run on the same data")
    try:
        tok = Tokenizer(path.read_bytes(), digest, kind)
    except (RuntimeError, OSError):
        raise MgrError(f"unreadable tokenizer for run '{run_dir.name}' ({path.name})") from None
    if tok.vocab_size != model_cfg.vocab_size:
        raise MgrError(f"run '{run_dir.name}': tokenizer has {tok.vocab_size} pieces, "
                       f"the model {model_cfg.vocab_size}")
    return tok


def load_run(run: str | Path, *, artifacts_dir: Path = Path("artifacts"), checkpoint: str = "final") -> RunWeights:
    """The parameters of one checkpoint of a training run, its config and tokenizer."""
    run_dir = resolve_run_dir(run, artifacts_dir)
    summary, model_cfg = read_summary(run_dir)
    step_dir, step = checkpoint_dir(run_dir, checkpoint)
    label = f"run '{run_dir.name}' at step {step}"
    weights = _restore_params(step_dir, Layout.of(model_cfg), label)
    tokenizer = run_tokenizer(run_dir, summary, model_cfg)
    return RunWeights(run_dir, summary, model_cfg, weights, tokenizer, step, str(checkpoint))


def load_engine(*, run: str | Path | None = None, artifacts_dir: Path = Path("artifacts"),
                checkpoint: str = "final", model_dir: Path | None = None,
                prefill_chunk: int = DEFAULT_CHUNK) -> Engine:
    """An Engine from a training run (`run`, `checkpoint`) or from an export (`model_dir`)."""
    if (run is None) == (model_dir is None):
        raise MgrError("give exactly one of --run (a training run) or --model (an export directory)")
    if model_dir is not None:
        from mgr.infer.export import read_export

        exp = read_export(Path(model_dir))
        return Engine(exp.model_config, exp.weights, exp.tokenizer, name=Path(model_dir).resolve().name,
                      quantization=exp.quantization, prefill_chunk=prefill_chunk)
    src = load_run(run, artifacts_dir=artifacts_dir, checkpoint=checkpoint)
    return Engine(src.model_config, src.weights, src.tokenizer, name=src.run_dir.name,
                  prefill_chunk=prefill_chunk)
