"""FLOPs and memory: the analytic estimate and XLA's own count of a compiled program."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import attention
import ffn
from mgr.config import ModelConfig
from mgr.runtime.paths import atomic_write_bytes, cache_dir

CACHE_FORMAT = 1
# The count depends on the program and on the code that unrolls and counts it; the program's
# text covers the first, these files' contents the second (a changed loop helper or counter
# must never be answered from an old entry).
_COUNTING_CODE = ("attention/base.py", "mgr/train/flops.py", "mgr/train/program.py")
_ROOT = Path(__file__).resolve().parents[2]


def analytic_forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token: each layer's attention and feed-forward (from their registry
    entries; an MoE counts every capacity slot it runs), and the head.

    The embedding lookup is a gather and counts nothing; norms and softmaxes are ignored as
    lower-order terms, as in the usual 6N accounting.
    """
    dims = cfg.attention_dims()
    total = 0.0
    for layer in range(cfg.n_layers):
        name = cfg.layer_attention(layer)
        entry = attention.get(name)
        if entry.layer_flops is not None:
            total += entry.layer_flops(cfg, seq_len)
            continue
        total += entry.flops_per_token(dims, cfg.algebra_config(name), seq_len)
        kind = cfg.layer_ffn(layer)
        total += ffn.get(kind).flops_per_token(cfg.d_model, cfg.ffn_hidden, cfg.ffn_config(kind), seq_len)
    return total + 2.0 * cfg.d_model * cfg.vocab_size


def analytic_train_flops_per_step(cfg: ModelConfig, batch_size: int, seq_len: int) -> float:
    """Forward + backward (taken as 2x forward) over one batch."""
    return 3.0 * batch_size * seq_len * analytic_forward_flops_per_token(cfg, seq_len)


def xla_flops(compiled: Any) -> float:
    """FLOPs of a compiled executable as XLA counts them (dict or list-of-dicts by version)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def xla_memory(compiled: Any) -> dict[str, int]:
    """Peak and temporary (activation) bytes of a compiled executable.

    `temp` excludes parameters and optimizer state (they are arguments); `peak` adds the
    arguments and outputs not aliased by donation.
    """
    m = compiled.memory_analysis()
    if m is None:
        return {"peak_memory_bytes": 0, "temp_memory_bytes": 0}
    temp = int(m.temp_size_in_bytes)
    peak = temp + int(m.argument_size_in_bytes) + int(m.output_size_in_bytes) - int(m.alias_size_in_bytes)
    return {"peak_memory_bytes": peak, "temp_memory_bytes": temp}


def _counting_code_digest() -> str:
    h = hashlib.sha256()
    for rel in _COUNTING_CODE:
        h.update((_ROOT / rel).read_bytes())
    return h.hexdigest()


def cached_count(program_text: str, count: Callable[[], float]) -> float:
    """`count()` (XLA's FLOPs of the unrolled program), remembered under cache_dir()/flops.

    The key hashes the ordinary lowering's text (the same program lowers to the same text), the
    jax and jaxlib versions and the counting code. A run, a benchmark and every seed and rate
    of a suite share one count per distinct program; an unreadable entry is recounted.
    """
    import jax
    import jaxlib

    key_src = json.dumps([CACHE_FORMAT, jax.__version__, jaxlib.__version__, _counting_code_digest()])
    key = hashlib.sha256(key_src.encode() + program_text.encode()).hexdigest()[:32]
    path = cache_dir() / "flops" / f"{key}.json"
    try:
        return float(json.loads(path.read_text())["flops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = float(count())
    atomic_write_bytes(path, json.dumps({"flops": value}).encode())
    return value

