"""Inference: load a training run or an export, generate with a fixed-size cache, export.

`Engine` (`engine`) runs a prefill over fixed chunks and one compiled decode step per token,
sampling on the device (`sampling`); `load_engine` (`load`) builds one from a run's checkpoint
or from an export directory (`export`, the safetensors format, int8 included), and
`export_run` (`convert`) writes such a directory from a run and scores it against the run.
Loading an export imports neither the trainer nor orbax: `convert` and the run loader import
them lazily.
"""

from mgr.infer.engine import DEFAULT_CHUNK, Engine, random_engine  # noqa: F401
from mgr.infer.load import load_engine, load_run  # noqa: F401
from mgr.infer.sampling import SamplingParams  # noqa: F401
from mgr.infer.textgen import GenerationStats, generate_text  # noqa: F401
from mgr.infer.weights import QUANTIZATIONS, QTensor  # noqa: F401


def export_run(*args, **kwargs):
    """See `mgr.infer.convert.export_run` (imported on use: it needs the data pipeline)."""
    from mgr.infer.convert import export_run as run

    return run(*args, **kwargs)
