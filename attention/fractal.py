"""Fractal attention: the kernel is the probability that a query and a key take the same
root-to-leaf path down one IFS tree.

Math: an iterated function system f_a(x) = s·x + (1 − s)·c_a on m learned anchors c_a defines an
m-ary tree of cylinders F_w(hull), F_w = f_{w_1} ∘ … ∘ f_{w_l} (attention/ifs.py). A router
descends it: at the node w = w_1..w_{l−1} reached so far it routes the point at the child's
scale, F_w^{-1}(x) = (x − F_w(0))/s^{l−1}, with level l's linear router, so branch a is taken
with probability softmax_a(W_l·(x − F_w(0))/τ) (the s^{l−1} is folded into W_l). The branch
taken at level l therefore conditions level l+1; with s → 1 the corners F_w(0) vanish and the
levels would be independent. P_x(w) = Π_l of those conditional probabilities is a distribution
over the m^d leaves, and for a query and a key routed independently the chance of the same
path is κ(q, k) = Σ_w P_q(w)·P_k(w) = ⟨φ(q), φ(k)⟩ with φ(x) = (P_x(w))_w ∈ R^{m^d}. Attention is
y_i = Σ_{j≤i} κ(q_i, k_j) v_j / (Σ_{j≤i} κ(q_i, k_j) + ε). Since κ is an explicit feature dot
product, causal attention is linear attention: prefix sums of φ(k_j) ⊗ v_j, O(T·m^d·K) time.
Claimed benefit: a positive, normalised, hierarchical (tree-address) kernel with linear time in
T and an O(1)-per-token decoding state. See markdown_documentation/fractal.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AlgebraConfig, AttentionDims, Dense, QKVProjection, pairwise_flops, require
from attention.ifs import cylinder_corners, inverse_map
from attention.registry import register


@dataclass(frozen=True, kw_only=True)
class FractalConfig(AlgebraConfig):
    """branches m and levels d of the router tree (m^d path features); contraction s ∈ (0, 1) of
    the IFS maps (how far the corner of a deep cylinder moves with each symbol; s → 1 would make
    the levels independent); temperature τ of each level's softmax; eps added to the normaliser;
    rope: rotary positions on q and k before routing (off by default: the address should depend
    on content, causal order already gives position); chunk: tokens per block of the chunked
    prefix sums (a speed knob; the output does not depend on it)."""

    branches: int = 4
    levels: int = 2
    contraction: float = 0.5
    temperature: float = 1.0
    eps: float = 1e-6
    rope: bool = False
    chunk: int = 32

    def validate(self, dims: AttentionDims) -> None:
        require(self.branches >= 2, f"fractal branches must be >= 2, got {self.branches}")
        require(self.levels >= 1, f"fractal levels must be >= 1, got {self.levels}")
        require(self.branches ** self.levels <= 4096,
                f"fractal branches**levels = {self.branches ** self.levels} path features is too many (max 4096)")
        require(0.0 < self.contraction < 1.0, f"fractal contraction must lie in (0, 1), got {self.contraction}")
        require(self.temperature > 0, f"fractal temperature must be > 0, got {self.temperature}")
        require(self.eps > 0, f"fractal eps must be > 0, got {self.eps}")
        require(self.chunk >= 1, f"fractal chunk must be >= 1 token, got {self.chunk}")

    @property
    def features(self) -> int:
        return self.branches ** self.levels


def node_logits(u_xLxm, kernel_KxLxm, anchors_mxK, s: float):
    """Level l's branch logits at every node w of depth l: W_l·(x − F_w(0)) = u_l − W_l·F_w(0),
    a list over levels of `[..., m^l, m]` (nodes in address order). `u` = W_l·x for every level;
    the corner logits W_l·F_w(0) depend on the parameters only, so they are computed once."""
    out = []
    for level in range(u_xLxm.shape[-2]):  # a loop over the (few, static) levels, never positions
        corner_logits = cylinder_corners(anchors_mxK, s, level) @ kernel_KxLxm[:, level, :]
        out.append(u_xLxm[..., level, None, :] - corner_logits)
    return out


def path_features(logits_per_level, temperature: float):
    """φ[w] = Π_l softmax(logits_l[w_<l] / τ)[w_l]: the probability of each root-to-leaf path,
    `[..., m^d]`, entry w = w_1·m^(d−1) + … + w_d (first level most significant). Float32."""
    phi = None
    for logits in logits_per_level:
        p_xNxm = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
        phi = p_xNxm[..., 0, :] if phi is None else (phi[..., :, None] * p_xNxm).reshape(*p_xNxm.shape[:-2], -1)
    return phi


def prefix_sum_attention(phi_q_BxTxGxRxF, phi_k_BxTxGxF, v_BxTxGxK, state, eps: float):
    """y_i = φ(q_i)·S_i / (φ(q_i)·z_i + ε) with S_i = S_0 + Σ_{j<=i} φ(k_j) ⊗ v_j, z_i likewise.

    The textbook prefix-sum form: it holds [B, T, G, F, K] float32 sums (T·F·K per kv head, never
    T·T). Kept as the plain statement the chunked fast path is tested against.
    """
    s0_BxGxFxK, z0_BxGxF = state
    kv_BxTxGxFxK = phi_k_BxTxGxF[..., None] * v_BxTxGxK[..., None, :]
    s_BxTxGxFxK = jnp.cumsum(kv_BxTxGxFxK, axis=1) + s0_BxGxFxK[:, None]
    z_BxTxGxF = jnp.cumsum(phi_k_BxTxGxF, axis=1) + z0_BxGxF[:, None]
    num_BxTxGxRxK = jnp.einsum("btgrf,btgfk->btgrk", phi_q_BxTxGxRxF, s_BxTxGxFxK)
    den_BxTxGxR = jnp.einsum("btgrf,btgf->btgr", phi_q_BxTxGxRxF, z_BxTxGxF)
    y = num_BxTxGxRxK / (den_BxTxGxR[..., None] + eps)
    return y, (s_BxTxGxFxK[:, -1], z_BxTxGxF[:, -1])


def chunked_linear_attention(phi_q_BxTxGxRxF, phi_k_BxTxGxF, v_BxTxGxK, state, eps: float, chunk: int):
    """The same y as `prefix_sum_attention`, with the prefix sums taken only at chunk boundaries.

    Inside a chunk of C tokens the kernel is formed explicitly ([C, C] per head, masked j <= i);
    earlier chunks enter through their summed state S = Σ φ(k)⊗v. This keeps [B, T/C, G, F, K]
    instead of [B, T, G, F, K] and was ~10x faster on CPU (the per-token prefix sum is pure
    memory traffic). `state` = (S_BxGxFxK, z_BxGxF) before the first token; returns the new one.
    """
    b, t, g, r, f = phi_q_BxTxGxRxF.shape
    kd = v_BxTxGxK.shape[-1]
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t
    if pad:  # zero keys add nothing to any sum; padded query rows are dropped below
        widths = [(0, 0), (0, pad)]
        phi_q_BxTxGxRxF = jnp.pad(phi_q_BxTxGxRxF, widths + [(0, 0)] * 3)
        phi_k_BxTxGxF = jnp.pad(phi_k_BxTxGxF, widths + [(0, 0)] * 2)
        v_BxTxGxK = jnp.pad(v_BxTxGxK, widths + [(0, 0)] * 2)
    q = phi_q_BxTxGxRxF.reshape(b, n, c, g, r, f)
    k = phi_k_BxTxGxF.reshape(b, n, c, g, f)
    v = v_BxTxGxK.reshape(b, n, c, g, kd)
    a_BxNxGxRxCxC = jnp.where(jnp.tril(jnp.ones((c, c), bool)), jnp.einsum("bncgrf,bnsgf->bngrcs", q, k), 0.0)
    num = jnp.einsum("bngrcs,bnsgk->bncgrk", a_BxNxGxRxCxC, v)
    den = jnp.sum(a_BxNxGxRxCxC, axis=-1).transpose(0, 1, 4, 2, 3)
    s0_BxGxFxK, z0_BxGxF = state
    s_BxNxGxFxK = jnp.cumsum(jnp.einsum("bnsgf,bnsgk->bngfk", k, v), axis=1) + s0_BxGxFxK[:, None]
    z_BxNxGxF = jnp.cumsum(jnp.sum(k, axis=2), axis=1) + z0_BxGxF[:, None]
    # Chunk n reads the state after chunk n-1 (exclusive prefix).
    s_before = jnp.concatenate([s0_BxGxFxK[:, None], s_BxNxGxFxK[:, :-1]], axis=1)
    z_before = jnp.concatenate([z0_BxGxF[:, None], z_BxNxGxF[:, :-1]], axis=1)
    num = num + jnp.einsum("bncgrf,bngfk->bncgrk", q, s_before)
    den = den + jnp.einsum("bncgrf,bngf->bncgr", q, z_before)
    y = (num / (den[..., None] + eps)).reshape(b, n * c, g, r, kd)[:, :t]
    return y, (s_BxNxGxFxK[:, -1], z_BxNxGxF[:, -1])


def path_probabilities_by_descent(module: "FractalAttention", x_xK):
    """P_x(w) for every address w `[..., m^d]`, by walking down the tree level by level: the
    points reached at depth l (one per node, F_w^{-1}(x): each child is its parent's point under
    the inverse IFS map of its branch) go through the module's router at scale s^l, and a child's
    probability is its parent's times the branch's. Slow (it routes m^l points per level); for the
    reference."""
    cfg = module.cfg
    m, d, s = cfg.branches, cfg.levels, cfg.contraction
    points_xNxK = x_xK.astype(jnp.float32)[..., None, :]  # the root: x itself
    probs_xN = jnp.ones(points_xNxK.shape[:-1], jnp.float32)
    for level in range(d):
        logits = s ** level * module.router(points_xNxK).reshape(*points_xNxK.shape[:-1], d, m)[..., level, :]
        probs_xN = (probs_xN[..., None] * jax.nn.softmax(logits / cfg.temperature, axis=-1)).reshape(
            *x_xK.shape[:-1], -1)
        children = inverse_map(points_xNxK[..., :, None, :], jnp.arange(m), s, module.anchors[...])
        points_xNxK = children.reshape(*x_xK.shape[:-1], -1, x_xK.shape[-1])
    return probs_xN


def _reference(module: "FractalAttention", x_BxTxD, positions_BxT):
    """Obviously correct: path probabilities by walking the tree, κ(q_i, k_j) = Σ_w P_q(w)·P_k(w)
    for every pair, masked to j <= i and normalised explicitly."""
    q, k, v = module.project(x_BxTxD, positions_BxT)
    rep = q.shape[2] // k.shape[2]
    pq_BxTxHxF = path_probabilities_by_descent(module, q)
    pk_BxSxHxF = jnp.repeat(path_probabilities_by_descent(module, k), rep, axis=2)
    kappa_BxTxSxH = jnp.einsum("bthf,bshf->btsh", pq_BxTxHxF, pk_BxSxHxF)
    visible_BxTxS = positions_BxT[:, None, :] <= positions_BxT[:, :, None]
    kappa_BxTxSxH = jnp.where(visible_BxTxS[..., None], kappa_BxTxSxH, 0.0)
    w_BxTxSxH = kappa_BxTxSxH / (jnp.sum(kappa_BxTxSxH, axis=2, keepdims=True) + module.cfg.eps)
    y = jnp.einsum("btsh,bshk->bthk", w_BxTxSxH, jnp.repeat(v, rep, axis=2)).astype(x_BxTxD.dtype)
    return module.wo(y.reshape(*y.shape[:2], -1))


def _flops(dims: AttentionDims, cfg: FractalConfig, seq_len: int) -> float:
    # Projections; the router (K -> d·m) on H query and G key heads, and at every node of the
    # tree (m + m² + … + m^d logits) the corner subtraction, ~4 ops of softmax and the multiply
    # into the path probabilities; per query head the in-chunk kernel and its
    # aggregation over the whole C x C block (2·C·F + 2·C·K, plus mask and row sum), the read of
    # the earlier chunks' state (2·F·K + 2·F) and the division; per kv head the chunk state
    # φ(k)ᵀv (2·F·K + F). The prefix sum over the T/C chunk states is O(F·K/C) and left out.
    h, g, kd = dims.n_heads, dims.n_kv_heads, dims.head_dim
    f, lm, c = cfg.features, cfg.levels * cfg.branches, min(cfg.chunk, seq_len)
    nodes = sum(cfg.branches ** (level + 1) for level in range(cfg.levels))
    router = (h + g) * (2.0 * kd * lm + 6.0 * nodes)
    read = h * (c * (2.0 * f + 2.0 * kd + 2.0) + 2.0 * f * kd + 2.0 * f + kd)
    state = g * (2.0 * f * kd + f)
    return pairwise_flops(dims, seq_len) + router + read + state


@register("fractal", config_cls=FractalConfig, flops_per_token=_flops, reference=_reference,
          relative_positions=True,
          description="same-path probability down an IFS routing tree, ⟨φ(q), φ(k)⟩, as causal linear attention")
class FractalAttention(nnx.Module):
    def __init__(self, dims: AttentionDims, cfg: FractalConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        self.qkv = QKVProjection(dims, rngs=rngs)
        # One tree shared by queries and keys (the kernel is P(same path) in the same tree) and
        # by all heads; the heads differ through their q/k projections. `router` holds W_l for
        # every level; the anchors are the IFS's fixed points, on the scale of the QK-normed
        # vectors (norm ~√K), so corners and points are comparable at initialisation.
        self.router = Dense(dims.head_dim, cfg.levels * cfg.branches, rngs=rngs)
        self.anchors = nnx.Param(jax.random.normal(rngs.params(), (cfg.branches, dims.head_dim), jnp.float32))
        self.wo = Dense(dims.n_heads * dims.head_dim, dims.d_model, rngs=rngs)

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        """The running sums S = Σ φ(k)⊗v `[B, G, F, K]` and z = Σ φ(k) `[B, G, F]`: O(1) per token.
        Always float32 (a long bf16 running sum would lose every small new term)."""
        g, f, kd = self.dims.n_kv_heads, self.cfg.features, self.dims.head_dim
        return {"s": jnp.zeros((batch, g, f, kd), jnp.float32), "z": jnp.zeros((batch, g, f), jnp.float32)}

    def project(self, x_BxTxD, positions_BxT):
        q, k, v = self.qkv(x_BxTxD, positions_BxT, rope=self.cfg.rope)
        return q, k, v.astype(jnp.float32)

    def tree_logits(self, x_xK):
        """Branch logits at every node of the tree, a list over levels of `[..., m^l, m]`."""
        cfg, kd = self.cfg, self.dims.head_dim
        u_xLxm = self.router(x_xK).astype(jnp.float32).reshape(*x_xK.shape[:-1], cfg.levels, cfg.branches)
        kernel_KxLxm = self.router.kernel[...].reshape(kd, cfg.levels, cfg.branches)
        return node_logits(u_xLxm, kernel_KxLxm, self.anchors[...], cfg.contraction)

    def path_probabilities(self, x_xK):
        """φ(x) `[..., m^d]`: the probability of each root-to-leaf path (float32)."""
        return path_features(self.tree_logits(x_xK), self.cfg.temperature)

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        dm, cfg = self.dims, self.cfg
        g, r = dm.n_kv_heads, dm.n_heads // dm.n_kv_heads
        q, k, v = self.project(x_BxTxD, positions_BxT)
        phi_q_BxTxHxF, phi_k = self.path_probabilities(q), self.path_probabilities(k)
        # Mean per-level routing entropy of the queries: H(path)/d, by the chain rule the mean
        # over levels of the entropy of a level's branch given the node reached.
        ent_BxTxH = -jnp.sum(phi_q_BxTxHxF * jnp.log(phi_q_BxTxHxF + 1e-30), axis=-1) / cfg.levels
        self.sow(nnx.Intermediate, "route_entropy", jax.lax.stop_gradient(ent_BxTxH),
                 reduce_fn=lambda _, new: new, init_fn=lambda: None)
        phi_q = phi_q_BxTxHxF.reshape(b, t, g, r, cfg.features)
        state = (cache["s"], cache["z"]) if cache is not None else (
            jnp.zeros((b, g, cfg.features, dm.head_dim), jnp.float32), jnp.zeros((b, g, cfg.features), jnp.float32))
        y, (s_new, z_new) = chunked_linear_attention(phi_q, phi_k, v, state, cfg.eps, cfg.chunk)
        if cache is not None:
            cache = {"s": s_new, "z": z_new}
        y_BxTxHK = y.reshape(b, t, -1).astype(x_BxTxD.dtype)
        return self.wo(y_BxTxHK), cache
