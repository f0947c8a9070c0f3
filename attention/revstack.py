"""The functional core of the reversible stack: coupling, its inverse, and an O(1)-memory VJP.

One layer maps two half-width streams (x1, x2) to

    y1 = x1 + F(x2),    y2 = x2 + G(y1),

which is inverted exactly by x2 = y2 - G(y1), x1 = y1 - F(x2), whatever F and G are. F and G
are written as `f(p, x)` / `g(p, x)` on one layer's parameter pytree `p`; every parameter pytree
here carries a leading layer axis L and is walked with `lax.scan`.

`reversible_stack` is a `jax.custom_vjp` over the WHOLE stack: its forward pass saves only the
final streams (and the parameters, which exist anyway), and its backward pass walks the layers
in reverse, rebuilding each layer's inputs from its outputs and taking F's and G's VJPs on the
rebuilt inputs. That is what keeps activation memory independent of depth; a custom VJP per
layer inside an ordinary scan would still store every layer's output for the outer scan's VJP.
See markdown_documentation/reversible.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import rms_normalize, scan

Branch = Callable[[Any, jax.Array], jax.Array]


def coupling(f: Branch, g: Branch, p_f, p_g, x1, x2):
    """One additive coupling layer: (x1, x2) -> (x1 + F(x2), x2 + G(y1))."""
    y1 = x1 + f(p_f, x2)
    return y1, x2 + g(p_g, y1)


def coupling_inverse(f: Branch, g: Branch, p_f, p_g, y1, y2):
    """The exact inverse of `coupling` (up to float rounding of the two subtractions)."""
    x2 = y2 - g(p_g, y1)
    return y1 - f(p_f, x2), x2


def scan_forward(f: Branch, g: Branch, p_f, p_g, x1, x2):
    """All L layers in order, plain autodiff-able (stores O(L) activations under `grad`)."""
    def body(carry, p):
        return coupling(f, g, p[0], p[1], *carry), None

    (y1, y2), _ = scan(body, (x1, x2), (p_f, p_g))
    return y1, y2


def scan_inverse(f: Branch, g: Branch, p_f, p_g, y1, y2):
    """All L layers inverted, last layer first."""
    def body(carry, p):
        return coupling_inverse(f, g, p[0], p[1], *carry), None

    (x1, x2), _ = scan(body, (y1, y2), (p_f, p_g), reverse=True)
    return x1, x2


# ---- the attention/MLP branches, applied functionally from NNX graph definitions -------------
# The graph definitions are static (hashable) and the positions are an explicit argument: a
# custom_vjp must not close over traced values.

def branches(gd_f, gd_g, positions_BxT) -> tuple[Branch, Branch]:
    """F(x) = attn(rmsnorm(x)) and G(x) = mlp(rmsnorm(x)) for one layer's parameters."""
    def f(p, x):
        return nnx.merge(gd_f, p)(rms_normalize(x), positions_BxT)[0]

    def g(p, x):
        return nnx.merge(gd_g, p)(rms_normalize(x))

    return f, g


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def reversible_stack(gd_f, gd_g, p_f, p_g, x1, x2, positions_BxT):
    """The stack's forward pass with a backward pass that recomputes instead of storing."""
    return scan_forward(*branches(gd_f, gd_g, positions_BxT), p_f, p_g, x1, x2)


def _stack_fwd(gd_f, gd_g, p_f, p_g, x1, x2, positions_BxT):
    y1, y2 = scan_forward(*branches(gd_f, gd_g, positions_BxT), p_f, p_g, x1, x2)
    # Only the outputs are residuals: nothing per layer, so memory does not grow with L.
    return (y1, y2), (p_f, p_g, y1, y2, positions_BxT)


def scan_backward(f: Branch, g: Branch, p_f, p_g, y1, y2, dy1, dy2):
    """VJP of `scan_forward` from its OUTPUTS: (dp_f, dp_g, dx1, dx2), layers walked in reverse."""
    def body(carry, p):
        y1, y2, dy1, dy2 = carry
        pf, pg = p
        # Undo G first (its input y1 is known), then F on the rebuilt x2; the VJPs are taken
        # on the rebuilt inputs, so each layer's activations live only inside this iteration.
        g_out, g_vjp = jax.vjp(g, pg, y1)
        x2 = y2 - g_out
        dpg, dy1_from_g = g_vjp(dy2)
        dy1 = dy1 + dy1_from_g
        f_out, f_vjp = jax.vjp(f, pf, x2)
        x1 = y1 - f_out
        dpf, dx2_from_f = f_vjp(dy1)
        return (x1, x2, dy1, dy2 + dx2_from_f), (dpf, dpg)

    (_, _, dx1, dx2), (dp_f, dp_g) = scan(body, (y1, y2, dy1, dy2), (p_f, p_g),
                                                  reverse=True)
    return dp_f, dp_g, dx1, dx2


def _stack_bwd(gd_f, gd_g, res, cotangents):
    p_f, p_g, y1, y2, positions_BxT = res
    grads = scan_backward(*branches(gd_f, gd_g, positions_BxT), p_f, p_g, y1, y2, *cotangents)
    return (*grads, None)  # positions are integers: no cotangent


reversible_stack.defvjp(_stack_fwd, _stack_bwd)


def plain_stack(gd_f, gd_g, p_f, p_g, x1, x2, positions_BxT):
    """The same function as `reversible_stack` under ordinary autodiff (the comparison path)."""
    return scan_forward(*branches(gd_f, gd_g, positions_BxT), p_f, p_g, x1, x2)


def cached_stack(gd_f, gd_g, p_f, p_g, x1, x2, positions_BxT, cache):
    """Decoding: the forward stack with each layer's KV cache (stacked on a leading L axis)."""
    def body(carry, layer):
        x1, x2 = carry
        pf, pg, c = layer
        a, c = nnx.merge(gd_f, pf)(rms_normalize(x2), positions_BxT, c)
        y1 = x1 + a
        return (y1, x2 + nnx.merge(gd_g, pg)(rms_normalize(y1))), c

    (y1, y2), cache = scan(body, (x1, x2), (p_f, p_g, cache))
    return y1, y2, cache


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """One module of the same type whose every parameter gains a leading axis of len(modules)."""
    gd, _ = nnx.split(modules[0])
    states = [nnx.split(m)[1] for m in modules]
    return nnx.merge(gd, jax.tree.map(lambda *xs: jnp.stack(xs), *states))
