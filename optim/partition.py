"""Which parameters are hidden matrices, embeddings, the head, or vectors/scalars.

Decided here once, from each parameter's path and rank, and used by every consumer: AdamW's
weight-decay mask, Muon's routing, reports. The decoder names its token table `embed` and its
output projection `head` (see mgr/model/decoder.py). Inside the blocks a hidden matrix is the weight of
a linear map: a parameter named `kernel` (as `attention.base.Dense` and `nnx.Linear` name it)
with two or more axes (with `stacked=True`, a leading layer axis from `nnx.scan` is not counted).
Everything else is a "vector": norms, biases, scalars, and also 2-D tables that are not linear
maps (ultrametric's per-head level log-increments `log_delta`, braid's `t_bias`), which orthogonalising
or decaying would not make sense for. An algebra that adds a projection must therefore call it
`kernel` (use `Dense`) for Muon to treat it as a matrix.

Kernels are stored `(..., in, out)` (see `attention.base.Dense`): the last two axes of a matrix
are its input and output axes and any leading axes (the stacked layer axis, per-head blocks)
are batch axes, which is what `matrix_axes` tells Muon. That one rule is right for both the
unrolled `(in, out)` and the stacked `(L, in, out)` layouts.

Feed-forward experts (ffn/moe.py) store `kernel [E, in, out]`: E is one more batch axis, so each
expert's matrix is a matrix here (Muon orthogonalises each on its own, weight decay applies).
The MoE router (`blocks/<i>/mlp/router/kernel`, D x E; the block names its feed-forward `mlp`)
takes the head's role, AdamW with decay, not Muon:
like the head it is a readout whose logits choose among discrete options, and with E << D its
gradient has rank <= E, whose weak directions (often the load-balancing term's alone)
Newton–Schulz would raise to the same unit step as the task's, so `aux_weight` would no longer
set how hard balance is pushed.
"""

from __future__ import annotations

from typing import Any

import jax

MATRIX, EMBEDDING, HEAD, VECTOR = "matrix", "embedding", "head", "vector"
ROLES = (MATRIX, EMBEDDING, HEAD, VECTOR)
# A feed-forward's router: the block's `mlp` holding ffn/moe.py's `router` (a readout: see
# above). Fractal attention's `attn/router` is a hidden map of the algebra and stays a matrix.
FFN, ROUTER = "mlp", "router"


def path_str(path) -> str:
    """'blocks/0/attn/wo/kernel' from a jax key path (nnx's trailing '.value' dropped)."""
    parts = []
    for k in path:
        part = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        parts.append(str(part))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def role_of(path: str, ndim: int, *, stacked: bool = False) -> str:
    """The role of the parameter at `path` ('blocks/0/attn/wo/kernel') with `ndim` axes."""
    parts = path.split("/")
    if parts[0] == "embed":
        return EMBEDDING
    if parts[0] == "head" or parts[-3:] == [FFN, ROUTER, "kernel"]:
        return HEAD
    is_matrix = parts[-1] == "kernel" and ndim - (1 if stacked else 0) >= 2
    return MATRIX if is_matrix else VECTOR


def matrix_axes(ndim: int) -> tuple[int, int]:
    """(reduction/input axis, output axis) of a matrix-role parameter with `ndim` axes."""
    if ndim < 2:
        raise ValueError(f"a matrix needs two axes, got ndim={ndim}")
    return ndim - 2, ndim - 1


def roles(params: Any, *, stacked: bool = False) -> Any:
    """A pytree like `params` whose leaves are role strings."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: role_of(path_str(p), x.ndim, stacked=stacked), params)


def decay_mask(params: Any, *, stacked: bool = False) -> Any:
    """Weight decay on matrices only (hidden matrices, embedding table and head)."""
    return jax.tree.map(lambda r: r != VECTOR, roles(params, stacked=stacked))


def role_table(params: Any, *, stacked: bool = False) -> dict[str, str]:
    """{path: role} for reports and tests."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {path_str(p): role_of(path_str(p), x.ndim, stacked=stacked) for p, x in flat}
