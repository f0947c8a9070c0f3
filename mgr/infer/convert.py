"""`mgr export`: a training run's checkpoint as an export directory, measured against the run.

The export is written, read back through the same verifying loader that `mgr generate --model`
uses, and scored: the validation cross-entropy of the exported weights and of the checkpoint's
own float32 weights on the same tokens, the first `val_batches` batches of the run's fixed
validation set (as `mgr.train` measures validation: the mean next-token CE of packed windows).
Both numbers and the sizes go into config.json before the directory is renamed into place.
"""

from __future__ import annotations

import time
from pathlib import Path

from core.errors import MgrError
from mgr.infer.engine import Engine
from mgr.infer.export import check_destination, read_export, staging, write_config, write_files
from mgr.infer.load import load_run
from mgr.infer.weights import Layout, check_quantization

DEFAULT_VAL_BATCHES = 8


def validation_tokens(summary: dict, n_batches: int):
    """The first `n_batches` validation batches of the run's data, `[N, B, T+1]` int32."""
    from mgr.config import DataConfig
    from mgr.data import build_data

    data_cfg = DataConfig.from_dict(summary["config"]["data"])
    val = build_data(data_cfg).val_batches()
    return val[: max(1, min(int(n_batches), len(val)))]


def compare_ce(original: Engine, exported: Engine, val) -> dict:
    """Validation CE of both engines on the same batches, and the relative difference."""
    ce_orig, ce_exp = original.mean_loss(val), exported.mean_loss(val)
    n, b, width = val.shape
    return {"status": "ok", "batches": int(n), "tokens": int(n * b * (width - 1)),
            "val_ce_original": ce_orig, "val_ce_export": ce_exp,
            "relative_difference": (ce_exp - ce_orig) / ce_orig}


def export_run(run: str | Path, out: Path, *, artifacts_dir: Path = Path("artifacts"), checkpoint: str = "final",
               quantize: str | None = None, overwrite: bool = False,
               val_batches: int = DEFAULT_VAL_BATCHES) -> dict:
    """Write the export of `run` to `out`; returns its config.json content (with the evaluation).

    Raises MgrError for a missing run or checkpoint, an unknown quantization, or an existing
    `out` without `overwrite`. When the run's data cannot be rebuilt (a data directory that is
    gone) the export is still written, and its evaluation says why no CE was measured.
    """
    check_quantization(quantize)
    if val_batches < 1:
        raise MgrError(f"--val-batches must be at least 1, got {val_batches}")
    out = Path(out)
    check_destination(out, overwrite)  # fail before reading any checkpoint
    t0 = time.perf_counter()
    src = load_run(run, artifacts_dir=artifacts_dir, checkpoint=checkpoint)
    layout = Layout.of(src.model_config)
    weights = layout.quantize(src.weights) if quantize else src.weights
    source = {"run": src.run_dir.name, "checkpoint": src.checkpoint, "step": src.step,
              "run_val_ce_best": src.summary.get("results", {}).get("val_ce_best")}
    with staging(out, overwrite) as tmp:
        config = write_files(tmp, src.model_config, weights, src.tokenizer, quantization=quantize, source=source)
        write_config(tmp, config)
        exp = read_export(tmp, shown=str(out))  # score exactly what was written, as it will be read
        original = Engine(src.model_config, src.weights, src.tokenizer, name=src.run_dir.name)
        exported = Engine(exp.model_config, exp.weights, exp.tokenizer, name=out.name,
                          quantization=exp.quantization)
        try:
            val = validation_tokens(src.summary, val_batches)
        except (MgrError, KeyError, TypeError) as e:
            config["evaluation"] = {"status": "unavailable", "reason": f"the run's validation data: {e}"}
        else:
            config["evaluation"] = compare_ce(original, exported, val)
        config["export_seconds"] = round(time.perf_counter() - t0, 3)
        write_config(tmp, config)
    return config
