"""The decoder: token embedding -> N pre-norm blocks -> RMSNorm -> untied head -> soft-cap.

Every linear layer multiplies 2-D `(B*T, D)` activations (see `attention.base.Dense`); heads
are formed only inside attention. Logits come out in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import Dense, rms_normalize
from mgr.model.blocks import make_stack, residual_with_aux
from mgr.model import head_loss
from mgr.config import ModelConfig


class Embedding(nnx.Module):
    def __init__(self, vocab: int, d_model: int, *, rngs: nnx.Rngs):
        self.table = nnx.Param(jax.random.normal(rngs.params(), (vocab, d_model), jnp.float32))

    def __call__(self, tokens):
        return jnp.take(self.table[...], tokens, axis=0)


class Decoder(nnx.Module):
    """`Decoder(cfg, rngs=nnx.Rngs(seed))(tokens_BxT) -> logits_BxTxV` (float32)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.blocks = nnx.List(make_stack(cfg, rngs=rngs))
        # Small head init: logits start near zero, so the loss at init is close to ln V.
        self.head = Dense(cfg.d_model, cfg.vocab_size, rngs=rngs, std=0.02 / cfg.d_model ** 0.5 * 8)

    def init_cache(self, batch: int, dtype=jnp.float32) -> list:
        """Empty per-layer caches for prefill + token-by-token decoding."""
        return [blk.init_cache(batch, dtype) for blk in self.blocks]

    def hidden_and_aux(self, tokens_BxT, positions_BxT=None, caches=None):
        """Final normalised hidden states `[B, T, D]`, the updated caches, and the sum of the
        layers' auxiliary losses (a float32 scalar: an MoE's balancing terms, else 0)."""
        b, t = tokens_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        # The embedding table is a float32 master weight; the stream runs in the compute dtype.
        x = self.embed(tokens_BxT).astype(jnp.dtype(self.cfg.compute_dtype))
        new_caches, aux = [], jnp.zeros((), jnp.float32)
        for i, blk in enumerate(self.blocks):
            x, c, a = residual_with_aux(blk, x, positions_BxT, None if caches is None else caches[i])
            new_caches.append(c)
            aux = aux + a
        return rms_normalize(x), (None if caches is None else new_caches), aux

    def hidden(self, tokens_BxT, positions_BxT=None, caches=None):
        """Final normalised hidden states `[B, T, D]` and the updated caches."""
        h, caches, _ = self.hidden_and_aux(tokens_BxT, positions_BxT, caches)
        return h, caches

    def logits(self, h):
        z = self.head(h).astype(jnp.float32)
        cap = self.cfg.logit_softcap
        return cap * jnp.tanh(z / cap)

    def __call__(self, tokens_BxT, positions_BxT=None):
        h, _ = self.hidden(tokens_BxT, positions_BxT)
        return self.logits(h)

    def decode(self, tokens_BxT, positions_BxT, caches):
        """Cached forward over a chunk (T = 1 when decoding): logits and updated caches."""
        h, caches = self.hidden(tokens_BxT, positions_BxT, caches)
        return self.logits(h), caches

    def loss(self, batch_BxTp1):
        """Mean next-token cross-entropy of a packed `[B, T+1]` batch, as the training objective:
        its gradient also carries the layers' auxiliary losses (see `with_aux_gradient`)."""
        inputs, targets = batch_BxTp1[:, :-1], batch_BxTp1[:, 1:]
        h, _, aux = self.hidden_and_aux(inputs)
        # The head and its loss are fused and chunked over tokens (mgr/model/head_loss.py): the
        # [B*T, V] logits never exist whole. Same values and gradients as `logits` + softmax CE.
        ce = head_loss.mean_softcap_cross_entropy(
            h.reshape(-1, h.shape[-1]), self.head.kernel[...].astype(h.dtype), targets.reshape(-1),
            self.cfg.logit_softcap, head_loss.CHUNK)
        return with_aux_gradient(ce, aux)


def with_aux_gradient(loss: jax.Array, aux: jax.Array) -> jax.Array:
    """`loss` in value, `loss + aux` in gradient.

    The auxiliary terms (an MoE's load balancing and z-loss, already weighted) train the model,
    but the value every record reports as cross-entropy (train CE, validation CE, the bench's
    comparisons across feed-forward kinds) stays the cross-entropy alone. `aux - aux` is exactly
    0 for a finite aux; a non-finite one still makes the loss non-finite, so divergence shows.
    """
    return loss + (aux - jax.lax.stop_gradient(aux))


def param_count(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
