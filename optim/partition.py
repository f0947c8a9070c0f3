"""Which parameters are hidden matrices, embeddings, the head, or vectors/scalars.

Decided here once, from each parameter's path and rank, and used by every consumer: AdamW's
weight-decay mask, Muon's routing, reports. The decoder names its token table `embed` and its
output projection `head` (see mgr/model.py); everything else with two or more axes inside the
blocks is a hidden matrix (with `stacked=True`, a leading layer axis from `nnx.scan` is not
counted as a matrix axis).
"""

from __future__ import annotations

from typing import Any

import jax

MATRIX, EMBEDDING, HEAD, VECTOR = "matrix", "embedding", "head", "vector"
ROLES = (MATRIX, EMBEDDING, HEAD, VECTOR)


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
    top = path.split("/", 1)[0]
    if top == "embed":
        return EMBEDDING
    if top == "head":
        return HEAD
    return MATRIX if ndim - (1 if stacked else 0) >= 2 else VECTOR


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
