"""Train-step activation memory against depth: the README's reversible-versus-standard table.

Temp bytes come from the compiled program's memory analysis, so the table measures what XLA
allocates, not an estimate.
"""

from __future__ import annotations

from mgr.config import ModelConfig, TrainConfig
from mgr.train import build_program

DEPTH_VARIANTS = {
    "reversible": dict(attention="reversible"),
    "reversible, recompute=False": dict(attention="reversible",
                                        attention_options={"reversible": {"recompute": False}}),
    "standard": dict(attention="standard"),
}


def depth_memory_table(depths=(2, 4, 8, 16), variants: dict | None = None, *, d_model: int = 128,
                       n_heads: int = 4, seq_len: int = 256, batch: int = 8,
                       vocab: int = 4096) -> dict[str, dict[int, int]]:
    """{variant: {depth: temp bytes}} of the compiled train step (AdamW, donated state).

    Temp bytes (`compiled.memory_analysis().temp_size_in_bytes`) exclude parameters and
    optimizer state, so they measure activations plus gradient/update temporaries.
    """
    table = {}
    for label, overrides in (variants or DEPTH_VARIANTS).items():
        table[label] = {}
        for depth in depths:
            cfg = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=depth, n_heads=n_heads,
                              n_kv_heads=n_heads, max_seq_len=seq_len, **overrides)
            prog = build_program(cfg, TrainConfig(), (batch, seq_len + 1), total_steps=10)
            table[label][depth] = prog.memory["temp_memory_bytes"]
    return table


def render_depth_table(table: dict[str, dict[int, int]]) -> str:
    """Markdown: temp MiB per depth and the deepest/shallowest ratio, one row per variant."""
    depths = sorted(next(iter(table.values())))
    head = ("| stack | " + " | ".join(f"L={d}" for d in depths)
            + f" | L={depths[-1]} / L={depths[0]} |")
    lines = [head, "|---" * (len(depths) + 2) + "|"]
    for label, row in table.items():
        cells = " | ".join(f"{row[d] / 2**20:.1f} MiB" for d in depths)
        lines.append(f"| {label} | {cells} | {row[depths[-1]] / row[depths[0]]:.2f}x |")
    return "\n".join(lines)
