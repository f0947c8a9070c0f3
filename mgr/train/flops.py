"""FLOPs and memory: the analytic estimate and XLA's own count of a compiled program."""

from __future__ import annotations

from typing import Any

import attention
import ffn
from mgr.config import ModelConfig


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
