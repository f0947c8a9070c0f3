"""The inference engine: a prefill over fixed chunks, then one compiled decode step per token.

Exactly two programs serve generation for a (model configuration, batch size): `prefill`, a
chunk of C prompt tokens written into the fixed-size cache, and `step`, one token in, the cache
updated, the next token sampled on the device. Both take the cache as a donated argument and
every position and sampling knob as a traced array, so a token never recompiles and neither
does a new temperature, top-k, top-p or seed. A prompt of L tokens runs floor((L-1)/C) chunk
calls and its remaining tokens through the decode step: the prompt is never padded (a recurrent
algebra's state would absorb the padding), and the last prompt token always goes through the
step, where sampling lives. The programs are cached per configuration, so a second Engine of the
same shape reuses them. Engines are not thread-safe: callers serialise access.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core.errors import MgrError
from mgr.config import ModelConfig
from mgr.infer.sampling import SamplingParams, sample, step_key
from mgr.infer.weights import Layout, QTensor, check_quantization, config_key, weight_bytes
from mgr.model import Decoder

DEFAULT_CHUNK = 16  # prefill chunk: long enough to batch the prompt, short enough to waste little


class Programs:
    """The jitted functions of one model configuration (shared by all its engines).

    `traces` counts how often each function body was traced, per (function, batch size,
    weight kind): a test reads it to prove that generating tokens, or changing sampling knobs,
    compiles nothing new.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self.traces: collections.Counter = collections.Counter()
        self.prefill = jax.jit(self._prefill, donate_argnums=1)
        self.step = jax.jit(self._step, donate_argnums=1)
        self.forward = jax.jit(self._forward)
        self.mean_loss = jax.jit(self._mean_loss)
        # Empty caches from one small program per batch size (eagerly, each of init_cache's
        # ops would be an XLA program of its own); a fresh copy each call, as the step donates it.
        self.empty_caches = jax.jit(self._empty_caches, static_argnums=0)

    def _prefill(self, weights, caches, tokens_BxC, start):
        b, c = tokens_BxC.shape
        self._count("prefill", b, weights)
        positions_BxC = start + jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
        _, caches = self.layout.merge(weights).hidden(tokens_BxC, positions_BxC, caches)
        return caches

    def _step(self, weights, caches, tokens_B, position, temperature, top_k, top_p, seed):
        self._count("step", tokens_B.shape[0], weights)
        positions_Bx1 = jnp.full((tokens_B.shape[0], 1), position, jnp.int32)
        logits_Bx1xV, caches = self.layout.merge(weights).decode(tokens_B[:, None], positions_Bx1, caches)
        next_B = sample(logits_Bx1xV[:, -1], step_key(seed, position), temperature, top_k, top_p)
        return caches, next_B

    def _forward(self, weights, tokens_BxT):
        self._count("forward", tokens_BxT.shape[0], weights)
        return self.layout.merge(weights)(tokens_BxT)

    def _mean_loss(self, weights, batches_NxBxTp1):
        self._count("loss", batches_NxBxTp1.shape[1], weights)
        model = self.layout.merge(weights)
        return jnp.mean(jax.lax.map(model.loss, batches_NxBxTp1))

    def _count(self, fn: str, batch: int, weights) -> None:
        kind = "int8" if any(isinstance(w, QTensor) for w in weights.values()) else "float32"
        self.traces[f"{fn}/b{batch}/{kind}"] += 1

    def _empty_caches(self, batch: int):
        self.traces[f"init/b{batch}"] += 1
        # The abstract model suffices: init_cache reads shapes, never parameter values.
        return self.layout.abstract_model.init_cache(batch)


_PROGRAMS: dict[str, Programs] = {}


def programs_for(cfg: ModelConfig) -> Programs:
    key = config_key(cfg)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Programs(Layout.of(cfg))
    return _PROGRAMS[key]


class Engine:
    """Generation from one model's weights (float32, or int8 dequantised inside the programs).

    `encode(text)` returns `[BOS] + pieces` when the tokenizer has a BOS id, since every training
    document starts with one; `decode` drops special ids. Without a tokenizer (tests, benchmarks
    of random models) an engine works on token ids only.
    """

    def __init__(self, model_cfg: ModelConfig, weights: dict[str, Any], tokenizer=None, *, name: str,
                 quantization: str | None = None, prefill_chunk: int = DEFAULT_CHUNK):
        if prefill_chunk < 1:
            raise MgrError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.model_config = model_cfg
        self.name = name
        self.max_seq_len = int(model_cfg.max_seq_len)
        self.vocab_size = int(model_cfg.vocab_size)
        self.tokenizer = tokenizer
        self.quantization = check_quantization(quantization)
        self.prefill_chunk = int(prefill_chunk)
        self._programs = programs_for(model_cfg)
        self._programs.layout.check(weights, f"weights of '{name}'")
        self.weights = jax.device_put(weights)
        self.eos_id = getattr(tokenizer, "eos_id", None)
        self.bos_id = getattr(tokenizer, "bos_id", None)

    @classmethod
    def from_state(cls, model_cfg: ModelConfig, state, tokenizer=None, *, name: str,
                   quantize: str | None = None, **kw) -> "Engine":
        """An engine from an NNX parameter State (as `nnx.split(model, nnx.Param)` gives)."""
        layout = Layout.of(model_cfg)
        weights = layout.flatten(state)
        if check_quantization(quantize):
            weights = layout.quantize(weights)
        return cls(model_cfg, weights, tokenizer, name=name, quantization=quantize, **kw)

    # ---- text ------------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise MgrError(f"model '{self.name}' has no tokenizer: give token ids instead of text")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        ids = list(self._need_tokenizer().encode(text))
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self._need_tokenizer().decode(ids)

    def text_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """The text of a token stream, piece by piece. A piece is held back while it ends in an
        incomplete UTF-8 sequence (byte-fallback tokens split characters across ids)."""
        seen: list[int] = []
        shown = ""
        for i in ids:
            seen.append(int(i))
            text = self.decode(seen)
            if text.endswith("\ufffd"):
                continue
            yield text[len(shown):]
            shown = text
        text = self.decode(seen)
        if len(text) > len(shown):
            yield text[len(shown):]

    @property
    def weight_bytes(self) -> int:
        return weight_bytes(self.weights)

    @property
    def traces(self) -> dict[str, int]:
        """How often each function of this configuration has been traced so far, keyed
        `function/b<batch>/<float32|int8>` (e.g. `step/b1/float32`)."""
        return dict(self._programs.traces)

    # ---- generation ------------------------------------------------------------------------
    def check_prompt(self, ids: list[int], max_new_tokens: int, *, truncate: bool = False) -> list[int]:
        """The ids to generate from: they must fit with `max_new_tokens` in the context.

        Raises MgrError naming the limit, or with `truncate` keeps the newest tokens (drops
        from the left) so prompt + new tokens fill the context exactly.
        """
        ids = [int(i) for i in ids]
        if not ids:
            raise MgrError("the prompt is empty: give at least one token")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise MgrError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
        room = self.max_seq_len - int(max_new_tokens)
        if room < 1:
            raise MgrError(f"{max_new_tokens} new tokens leave no room for a prompt in the context of "
                           f"{self.max_seq_len} tokens (the model's max_seq_len)")
        if len(ids) <= room:
            return ids
        if truncate:
            return ids[-room:]
        raise MgrError(f"prompt of {len(ids)} tokens + {max_new_tokens} new tokens exceeds the context of "
                       f"{self.max_seq_len} tokens (the model's max_seq_len); shorten the prompt, ask for "
                       "fewer new tokens, or truncate it from the left (mgr generate --truncate-left)")

    def _rows(self, rows_BxL: np.ndarray, params: SamplingParams) -> Iterator[np.ndarray]:
        """The new tokens of every row, one `[B]` array per position."""
        prog, w, c = self._programs, self.weights, self.prefill_chunk
        b, length = rows_BxL.shape
        knobs = params.arrays()
        caches = prog.empty_caches(b)
        n_chunks = (length - 1) // c
        for i in range(n_chunks):
            caches = prog.prefill(w, caches, rows_BxL[:, i * c:(i + 1) * c], np.int32(i * c))
        next_B = None
        for pos in range(n_chunks * c, length):
            caches, next_B = prog.step(w, caches, rows_BxL[:, pos], np.int32(pos), *knobs)
        for n in range(1, params.max_new_tokens):
            # Dispatch the next step before reading this token: the host copy overlaps compute.
            caches, after_B = prog.step(w, caches, next_B, np.int32(length + n - 1), *knobs)
            yield np.asarray(next_B)
            next_B = after_B
        yield np.asarray(next_B)

    def stream(self, ids: list[int], params: SamplingParams) -> Iterator[int]:
        """New tokens one at a time (EOS, when the tokenizer has one, ends the stream unsent)."""
        params.validate(self)
        ids = self.check_prompt(ids, params.max_new_tokens)
        stop = self.eos_id if params.stop_at_eos else None
        for next_B in self._rows(np.asarray([ids], np.int32), params):
            token = int(next_B[0])
            if token == stop:
                return
            yield token

    def generate(self, ids: list[int], params: SamplingParams) -> list[int]:
        return list(self.stream(ids, params))

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """One batched decode over len(prompts) rows of equal length, each with its own cache.

        Rows run together until `max_new_tokens` or until every row has reached EOS; a row's
        tokens end before its first EOS.
        """
        params.validate(self)
        if not prompts:
            raise MgrError("generate_batch needs at least one prompt")
        rows = [self.check_prompt(p, params.max_new_tokens) for p in prompts]
        if len({len(r) for r in rows}) != 1:
            raise MgrError(f"batched prompts must have equal lengths, got {sorted({len(r) for r in rows})}")
        stop = self.eos_id if params.stop_at_eos else None
        out: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        for next_B in self._rows(np.asarray(rows, np.int32), params):
            for r, token in enumerate(next_B.tolist()):
                if done[r]:
                    continue
                if token == stop:
                    done[r] = True
                else:
                    out[r].append(token)
            if all(done):
                break
        return out

    def logits(self, tokens_BxT) -> np.ndarray:
        """Full-forward logits `[B, T, V]` (float32) without a cache, e.g. to score text."""
        return np.asarray(self._programs.forward(self.weights, jnp.asarray(tokens_BxT, jnp.int32)))

    def mean_loss(self, batches_NxBxTp1) -> float:
        """Mean next-token cross-entropy over packed `[N, B, T+1]` batches (as validation is)."""
        return float(self._programs.mean_loss(self.weights, jnp.asarray(batches_NxBxTp1, jnp.int32)))


def random_engine(model_cfg: ModelConfig, tokenizer=None, seed: int = 0, quantize: str | None = None,
                  **kw) -> Engine:
    """An untrained model's engine (for latency and memory benchmarks that need no training run)."""
    check_quantization(quantize)
    # One jit for the whole initialiser: eagerly every small init op is its own XLA program.
    state = jax.jit(lambda: nnx.split(Decoder(model_cfg, rngs=nnx.Rngs(seed)), nnx.Param)[1])()
    return Engine.from_state(model_cfg, state, tokenizer, name=f"random-{seed}", quantize=quantize, **kw)
