"""Independent float64 numpy forms of the pieces the attention algebras share.

Written from the math on the pages, not from `attention/base.py`: RoPE by complex numbers, the
QK-norm by its definition, grouped-query heads by an explicit head -> kv-head index, masks from
positions. The tests compare the registered modules (as the decoder builds them) with these, so a
bug in `QKVProjection`, `apply_rope`, `rms_normalize`, the mask or the GQA grouping is not
compared with itself.
"""

import numpy as np

EPS = 1e-6  # the RMSNorm floor the pages state (inside the square root)


def kernel(dense):
    """A Dense layer's raw `[in, out]` weight matrix, in float64."""
    return np.asarray(dense.kernel[...], np.float64)


def rms(x):
    """x / sqrt(mean(x²) + eps) over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)


def rope(x_BxTxHxK, pos_BxT, base):
    """Rotary embedding, half-split layout: channel f and f + K/2 form the complex number
    x_f + i·x_{f+K/2}, multiplied by e^{i·pos·base^(-f/(K/2))}."""
    half = x_BxTxHxK.shape[-1] // 2
    z = x_BxTxHxK[..., :half] + 1j * x_BxTxHxK[..., half:]
    freq = base ** (-np.arange(half) / half)
    z = z * np.exp(1j * np.asarray(pos_BxT, np.float64)[:, :, None, None] * freq)
    return np.concatenate([z.real, z.imag], axis=-1)


def heads(x_BxTxD, w_DxF, n_heads):
    """x @ w split into `n_heads` heads of consecutive channels: `[B, T, n, F / n]`."""
    y = np.asarray(x_BxTxD, np.float64) @ w_DxF
    return y.reshape(*y.shape[:2], n_heads, -1)


def kv_head(h, n_heads, n_kv_heads):
    """Grouped-query attention: query heads come in n_kv_heads consecutive groups of R = H/G,
    and group g reads kv head g."""
    return h // (n_heads // n_kv_heads)


def allowed(pos_BxT):
    """[B, T, S] causal mask from positions: key position <= query position."""
    pos = np.asarray(pos_BxT)
    return pos[:, None, :] <= pos[:, :, None]


def softmax(s, mask):
    s = np.where(mask, s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def qkv(module, x_BxTxD, pos_BxT, *, rope_qk=True):
    """q `[B, T, H, K]`, k and v `[B, T, G, K]` from a `ProjectedAttention`'s raw kernels:
    QK-norm per head, then RoPE (unless `rope_qk` is False)."""
    dims = module.dims
    q = rms(heads(x_BxTxD, kernel(module.qkv.wq), dims.n_heads))
    k = rms(heads(x_BxTxD, kernel(module.qkv.wk), dims.n_kv_heads))
    v = heads(x_BxTxD, kernel(module.qkv.wv), dims.n_kv_heads)
    if rope_qk:
        q, k = rope(q, pos_BxT, dims.rope_base), rope(k, pos_BxT, dims.rope_base)
    return q, k, v


def expand_kv(a_BxSxGxK, n_heads):
    """The kv head each query head reads, `[B, S, H, K]`."""
    g = a_BxSxGxK.shape[2]
    return a_BxSxGxK[:, :, [kv_head(h, n_heads, g) for h in range(n_heads)]]


def standard_attention(module, x_BxTxD, pos_BxT):
    """softmax(q·k/√K) v over earlier positions, then the output projection."""
    q, k, v = qkv(module, x_BxTxD, pos_BxT)
    h, kd = q.shape[2], q.shape[3]
    k, v = expand_kv(k, h), expand_kv(v, h)
    s = np.einsum("bihc,bjhc->bhij", q, k) / np.sqrt(kd)
    p = softmax(s, allowed(pos_BxT)[:, None])
    y = np.einsum("bhij,bjhc->bihc", p, v)
    return y.reshape(*y.shape[:2], -1) @ kernel(module.wo)


# ---- hypercomplex numbers, by a representation the attention code does not use ---------------

def _cmat(q):
    """Quaternion w + xi + yj + zk as the complex 2x2 matrix [[w + xi, y + zi], [-y + zi, w - xi]]
    (a faithful representation: the Hamilton product is the matrix product)."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([np.stack([w + 1j * x, y + 1j * z], -1), np.stack([-y + 1j * z, w - 1j * x], -1)], -2)


def qmul(a, b):
    m = _cmat(a) @ _cmat(b)
    return np.stack([m[..., 0, 0].real, m[..., 0, 0].imag, m[..., 0, 1].real, m[..., 0, 1].imag], -1)


def qconj(a):
    return a * np.array([1.0, -1.0, -1.0, -1.0])


def omul(x, y):
    """Cayley–Dickson, the octonion page's definition: (a, b)(c, d) = (ac − d̄b, da + bc̄)."""
    a, b, c, d = x[..., :4], x[..., 4:], y[..., :4], y[..., 4:]
    return np.concatenate([qmul(a, c) - qmul(qconj(d), b), qmul(d, a) + qmul(b, qconj(c))], -1)


def oconj(x):
    return np.concatenate([qconj(x[..., :4]), -x[..., 4:]], -1)


def rotor_attention(module, x_BxTxD, pos_BxT, n):
    """Rotor attention per the quaternion (n = 4) and octonion (n = 8) pages: softmax scores of the
    RoPE'd q·k/√K; rotors q̂, k̂ are the unit numbers of q, k before RoPE; each value is moved by
    (q̂_i conj(k̂_j)) v_j for quaternions and by q̂_i (conj(k̂_j) v_j) for octonions, per pair.
    Returns the per-head outputs `[B, T, H, K]` (before the output projection)."""
    mul, conj = (qmul, qconj) if n == 4 else (omul, oconj)
    eps = module.cfg.unit_eps
    q0, k0, v = qkv(module, x_BxTxD, pos_BxT, rope_qk=False)
    base = module.dims.rope_base
    q, k = rope(q0, pos_BxT, base), rope(k0, pos_BxT, base)
    h, kd = q.shape[2], q.shape[3]
    k, k0, v = (expand_kv(a, h) for a in (k, k0, v))
    p = softmax(np.einsum("bihc,bjhc->bhij", q, k) / np.sqrt(kd), allowed(pos_BxT)[:, None])

    def numbers(a):  # [B, T, H, K/n, n], unit length (with the page's eps floor)
        a = a.reshape(*a.shape[:3], kd // n, n)
        return a / np.sqrt(np.sum(a * a, -1, keepdims=True) + eps)

    qh, kh = numbers(q0)[:, :, None], conj(numbers(k0))[:, None]  # [B, T, 1, ..], [B, 1, S, ..]
    vn = v.reshape(*v.shape[:3], kd // n, n)[:, None]
    moved = mul(mul(qh, kh), vn) if n == 4 else mul(qh, mul(kh, vn))  # [B, T, S, H, M, n]
    y = np.einsum("bhij,bijhmn->bihmn", p, moved)
    return y.reshape(*y.shape[:3], kd)
