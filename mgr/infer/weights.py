"""The decoder's parameters as one flat mapping of names to arrays, and weight-only int8.

A name is the NNX parameter path joined by dots (`blocks.0.attn.qkv.wq.kernel`); the same
names key the tensors of an export, so a checkpoint, an engine and an export file agree on what
each array is. `Layout` is built once per model configuration from an abstract model (no
parameter is initialised to build it) and turns a flat mapping back into a `Decoder`.

int8 is symmetric and per output channel: every parameter with two or more axes (a matrix, or a
stack of them as the reversible stack keeps) stores int8 values and one float32 scale per
channel, `scale = max|w| / 127` over the input axis (-2); a lookup table (the token embedding)
is read by rows, so its channels are rows and the scale runs over the last axis. Vectors and
scalars stay float32: they are few and often sensitive (gains, biases). Dequantisation,
`q * scale`, happens inside the compiled programs, so int8 is what stays in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core.errors import MgrError
from mgr.config import ModelConfig
from mgr.model import Decoder, Embedding

QUANTIZATIONS = ("int8",)  # what `--quantize` accepts


class QTensor(NamedTuple):
    """An int8 tensor with float32 scales of the same rank (the reduced axis kept as 1)."""

    q: Any
    scale: Any


def check_quantization(quantize: str | None) -> str | None:
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise MgrError(f"unknown quantization '{quantize}'; valid: {', '.join(QUANTIZATIONS)} (or none)")
    return quantize


def config_key(cfg: ModelConfig) -> str:
    """A hashable identity of a model configuration (its dict holds unhashable options)."""
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str)


def _name(path) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    # Each NNX Variable is a pytree node whose one child is `.value`; it names nothing.
    return name[: -len(".value")] if name.endswith(".value") else name


@dataclass(frozen=True)
class Layout:
    """Names, shapes and tree structure of one configuration's parameters."""

    config: ModelConfig
    graphdef: Any
    treedef: Any
    names: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    row_channels: frozenset[str]  # lookup tables: one scale per row
    abstract_model: Any  # the model with ShapeDtypeStruct leaves (builds empty caches)

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Layout":
        key = config_key(cfg)
        if key not in _LAYOUTS:
            model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
            graphdef, state = nnx.split(model, nnx.Param)
            flat, treedef = jax.tree_util.tree_flatten_with_path(state)
            names = tuple(_name(p) for p, _ in flat)
            tables = [".".join(map(str, path)) + "." for path, node in nnx.iter_graph(model)
                      if isinstance(node, Embedding)]
            rows = frozenset(n for n in names if any(n.startswith(t) for t in tables))
            _LAYOUTS[key] = cls(cfg, graphdef, treedef, names, {n: tuple(leaf.shape) for n, (_, leaf)
                                                                 in zip(names, flat)}, rows, model)
        return _LAYOUTS[key]

    # ---- flat mappings ---------------------------------------------------------------------
    def flatten(self, state) -> dict[str, Any]:
        """An NNX parameter State (or a pytree of the same structure) as {name: array}."""
        leaves, treedef = jax.tree_util.tree_flatten(state)
        if treedef != self.treedef:
            raise MgrError("the parameters do not match the model configuration's structure")
        return dict(zip(self.names, leaves))

    def check(self, weights: dict[str, Any], what: str) -> None:
        """Raise MgrError unless `weights` has exactly this layout's names and shapes."""
        missing = [n for n in self.names if n not in weights]
        extra = sorted(set(weights) - set(self.names))
        if missing or extra:
            raise MgrError(f"{what}: tensors missing {missing[:3]} / unexpected {extra[:3]}")
        for n in self.names:
            w = weights[n]
            shape = tuple(w.q.shape) if isinstance(w, QTensor) else tuple(np.shape(w))
            if shape != self.shapes[n]:
                raise MgrError(f"{what}: tensor {n} has shape {shape}, the model needs {self.shapes[n]}")
            if isinstance(w, QTensor) and tuple(np.shape(w.scale)) != self.scale_shape(n):
                raise MgrError(f"{what}: scales of {n} have shape {tuple(np.shape(w.scale))}, "
                               f"expected {self.scale_shape(n)}")

    def merge(self, weights: dict[str, Any]) -> Decoder:
        """The Decoder of these weights, int8 ones dequantised (traceable: used inside jit)."""
        leaves = [dequantize(weights[n]) for n in self.names]
        return nnx.merge(self.graphdef, jax.tree_util.tree_unflatten(self.treedef, leaves))

    # ---- quantisation ----------------------------------------------------------------------
    def reduce_axis(self, name: str) -> int:
        return -1 if name in self.row_channels else -2

    def quantized(self, name: str) -> bool:
        return len(self.shapes[name]) >= 2

    def scale_shape(self, name: str) -> tuple[int, ...]:
        shape = list(self.shapes[name])
        shape[self.reduce_axis(name)] = 1
        return tuple(shape)

    def quantize(self, weights: dict[str, Any]) -> dict[str, Any]:
        """int8 per-channel copies of every matrix; vectors stay float32 (host numpy arrays)."""
        return {n: quantize_int8(w, self.reduce_axis(n)) if self.quantized(n) else np.asarray(w, np.float32)
                for n, w in weights.items()}


_LAYOUTS: dict[str, Layout] = {}


def quantize_int8(w, axis: int) -> QTensor:
    """Symmetric int8: `q = round(w / s)` in [-127, 127], `s = max|w| / 127` per channel."""
    w = np.asarray(w, np.float32)
    amax = np.max(np.abs(w), axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)  # an all-zero channel stays 0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return QTensor(q, scale)


def dequantize(w):
    if isinstance(w, QTensor):
        return jnp.asarray(w.q).astype(jnp.float32) * w.scale
    return w


def weight_bytes(weights: dict[str, Any]) -> int:
    """Bytes the weights occupy (int8 values plus their scales)."""
    return int(sum(x.nbytes for x in jax.tree.leaves(weights)))


def float32_bytes(layout: Layout) -> int:
    """Bytes of the same parameters in float32: the baseline of every size ratio."""
    return int(sum(4 * int(np.prod(s)) for s in layout.shapes.values()))
