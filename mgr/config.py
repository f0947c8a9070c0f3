"""Frozen, validated configurations that round-trip through `to_dict()` / `from_dict()`.

Every knob a run depends on lives in one of these, so `summary.json` records the whole
configuration and a run can be re-created from it. Construction validates; an impossible
configuration raises `MgrError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import MgrError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise MgrError(msg)


def _pattern(names: str | tuple[str, ...]) -> tuple[str, ...]:
    """One registered name, or a tuple of them, as the tuple tiled over layers."""
    return (names,) if isinstance(names, str) else tuple(names)


def _tile(pattern: tuple[str, ...], layer: int) -> str:
    return pattern[layer % len(pattern)]


COMPUTE_DTYPES = ("float32", "bfloat16")


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        _check(not unknown, f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Serialisable):
    """The decoder: sizes, and which attention algebra each layer uses.

    `attention` is one registered name or a tuple of names tiled over layers, so
    `("standard", "tropical")` with 4 layers gives standard, tropical, standard, tropical.
    `attention_options` maps an algebra name to keyword arguments of its config dataclass.
    `ffn` and `ffn_options` do the same for each layer's feed-forward kind (`ffn/`), tiled
    independently of `attention`: `ffn=("relu2", "moe")` puts experts on every second layer.
    """

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    max_seq_len: int = 128
    mlp_ratio: int = 4
    attention: str | tuple[str, ...] = "standard"
    attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    ffn: str | tuple[str, ...] = "relu2"
    ffn_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    logit_softcap: float = 15.0
    rope_base: float = 10000.0
    # The activations' dtype. "bfloat16" multiplies in bfloat16 with float32 master weights
    # (params, gradients and optimizer state stay float32; normalisation, softmax and the loss
    # run in float32), which CPUs with AVX-512 BF16 and every accelerator execute faster.
    compute_dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len",
                     "mlp_ratio"):
            _check(int(getattr(self, name)) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(self.n_heads % self.n_kv_heads == 0,
               f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        _check(self.d_model % self.n_heads == 0,
               f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        _check(self.head_dim % 2 == 0,
               f"head dim d_model/n_heads = {self.head_dim} must be even for RoPE")
        _check(self.compute_dtype in COMPUTE_DTYPES,
               f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got '{self.compute_dtype}'")
        if isinstance(self.attention, list):
            object.__setattr__(self, "attention", tuple(self.attention))
        _check(len(self.attention_pattern) > 0, "attention must name at least one algebra")
        # Imported here: the registry imports mgr.config for the dims type.
        import attention as attn_registry

        dims = self.attention_dims()
        for name in self.attention_pattern:
            attn_registry.get(name)  # raises MgrError listing valid names
        for name in self.attention_options:
            attn_registry.get(name)
        for name in set(self.attention_pattern):
            self.algebra_config(name).validate(dims)
        self._check_ffn()

    def _check_ffn(self) -> None:
        import attention as attn_registry
        import ffn as ffn_registry

        if isinstance(self.ffn, list):
            object.__setattr__(self, "ffn", tuple(self.ffn))
        _check(len(self.ffn_pattern) > 0, "ffn must name at least one feed-forward kind")
        _check(isinstance(self.ffn_options, dict), "ffn_options must map ffn names to their knobs")
        for name in (*self.ffn_pattern, *self.ffn_options):
            self.ffn_config(name)  # unknown names list the valid ones; bad knobs are one line
        for layer in range(self.n_layers):
            algebra, kind = self.layer_attention(layer), self.layer_ffn(layer)
            entry = attn_registry.get(algebra)
            own_module = entry.stack_factory is not None or entry.block_factory is not None
            _check(not own_module or kind == ffn_registry.DEFAULT,
                   f"layer {layer}: attention '{algebra}' builds its own residual module with a "
                   f"{ffn_registry.DEFAULT} feed-forward; ffn '{kind}' cannot be used on that layer")

    @property
    def ffn_pattern(self) -> tuple[str, ...]:
        return _pattern(self.ffn)

    def layer_ffn(self, layer: int) -> str:
        return _tile(self.ffn_pattern, layer)

    @property
    def ffn_hidden(self) -> int:
        """The feed-forward's hidden width (each expert's, for an MoE)."""
        return self.d_model * self.mlp_ratio

    def ffn_config(self, name: str):
        import ffn as ffn_registry

        entry = ffn_registry.get(name)
        opts = self.ffn_options.get(name, {})
        _check(isinstance(opts, dict), f"ffn_options for '{name}' must be an object of knobs")
        try:
            return entry.config_cls(**opts)
        except TypeError as e:
            raise MgrError(f"bad options for ffn '{name}': {e}") from None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def attention_pattern(self) -> tuple[str, ...]:
        return _pattern(self.attention)

    def layer_attention(self, layer: int) -> str:
        return _tile(self.attention_pattern, layer)

    def attention_dims(self):
        from attention.base import AttentionDims

        return AttentionDims(d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                             head_dim=self.head_dim, max_seq_len=self.max_seq_len,
                             rope_base=self.rope_base)

    def algebra_config(self, name: str):
        import attention as attn_registry

        entry = attn_registry.get(name)
        opts = self.attention_options.get(name, {})
        try:
            return entry.config_cls(**opts)
        except TypeError as e:
            raise MgrError(f"bad options for attention '{name}': {e}") from None


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Serialisable):
    """Where tokens come from and how they are cut into batches.

    `data_dir=None` means the embedded corpus (built from package data, no download).
    """

    data_dir: str | None = None
    corpus: str = "embedded"
    vocab_size: int = 4096
    tokenizer_type: str = "bpe"
    # Pieces the tokenizer keeps whole (chat and code markers such as "<user>", "<code>"): each
    # is one id, never split or merged into a neighbour.
    user_symbols: tuple[str, ...] = ()
    character_coverage: float = 0.9995  # share of characters the vocabulary covers; the rest byte-fall-back
    seq_len: int = 128
    batch_size: int = 8
    val_tokens: int = 32768
    n_shards: int = 8
    max_corpus_bytes: int = 8_000_000

    def __post_init__(self):
        _check(self.tokenizer_type in ("bpe", "unigram"),
               f"tokenizer_type must be 'bpe' or 'unigram', got '{self.tokenizer_type}'")
        object.__setattr__(self, "user_symbols", tuple(self.user_symbols))
        for sym in self.user_symbols:
            _check(isinstance(sym, str) and sym and not any(c.isspace() or c == "," for c in sym),
                   f"user symbols must be non-empty, without spaces or commas, got {sym!r}")
        _check(len(set(self.user_symbols)) == len(self.user_symbols), "user symbols must be distinct")
        _check(0.9 <= self.character_coverage <= 1.0,
               f"character_coverage must lie in [0.9, 1], got {self.character_coverage}")
        for name in ("vocab_size", "seq_len", "batch_size", "val_tokens", "max_corpus_bytes"):
            _check(int(getattr(self, name)) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(self.n_shards >= 2, "n_shards must be at least 2 (the last shard is validation)")
        _check(self.vocab_size >= 300, "vocab_size must be at least 300 (256 byte pieces + specials)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Serialisable):
    """The optimisation: optimizer and schedule by registered name, budget, intervals, seed."""

    optimizer: str = "adamw"
    schedule: str = "cosine"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule_options: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    steps: int | None = 200
    target_flops: float | None = None
    min_steps: int = 10
    seed: int = 0
    eval_every: int = 50
    checkpoint_every: int = 100
    grad_clip: float = 1.0
    log_every: int = 10
    time_limit_s: float | None = None
    devices: int = 1  # the total device count; with `mesh` unset, a 1-D data mesh of that size
    mesh: dict[str, int] | None = None  # e.g. {"data": 2, "fsdp": 2}; see `layout`
    checkpoints: bool = True

    def __post_init__(self):
        import optim

        optim.describe(self)  # unknown names or knobs fail here, at construction
        _check(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.steps is None or self.steps > 0, f"steps must be positive, got {self.steps}")
        _check(self.target_flops is None or self.target_flops > 0, "target_flops must be positive")
        if self.mesh is not None:
            _check(isinstance(self.mesh, dict), "mesh must map axis names to sizes")
            for axis, size in self.mesh.items():
                _check(axis in MESH_AXES, f"unknown mesh axis '{axis}'; the axes are {', '.join(MESH_AXES)}")
                _check(isinstance(size, int) and size >= 1, f"mesh axis {axis} must be a positive integer, got {size}")
            product = math.prod(self.mesh.values())
            # `devices` is the shorthand for data=N; given together they must agree.
            _check(self.devices in (1, product),
                   f"--devices {self.devices} disagrees with --mesh {format_mesh(self.mesh)} ({product} devices)")
            object.__setattr__(self, "devices", product)
            object.__setattr__(self, "mesh", {axis: int(self.mesh.get(axis, 1)) for axis in MESH_AXES})
        _check(self.devices >= 1, f"devices must be >= 1, got {self.devices}")
        _check(self.eval_every > 0 and self.checkpoint_every > 0 and self.log_every > 0,
               "eval_every, checkpoint_every and log_every must be positive")

    @property
    def layout(self) -> dict[str, int]:
        """Every mesh axis with its size: `mesh`, or `data=devices` (records from before `mesh`)."""
        given = self.mesh if self.mesh is not None else {"data": self.devices}
        return {axis: int(given.get(axis, 1)) for axis in MESH_AXES}


# Device-mesh axes: batches are split over both (the data-parallel size is their product);
# parameters and optimizer state over `fsdp` only (`mgr.train.sharding`).
MESH_AXES = ("data", "fsdp")


def parse_mesh(text: str) -> dict[str, int]:
    """`--mesh data=2,fsdp=2` as a mesh dict; TrainConfig checks the names and sizes."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        name, eq, size = part.partition("=")
        try:
            value = int(size)
        except ValueError:
            value = None
        _check(bool(eq) and value is not None, f"--mesh must be AXIS=SIZE pairs like data=2,fsdp=2, got '{text}'")
        _check(name.strip() not in out, f"--mesh names axis '{name.strip()}' twice")
        out[name.strip()] = value
    return out


def format_mesh(mesh: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def tiny_model(**overrides) -> ModelConfig:
    """The preset used by tests and demos: small enough to compile in about a second on CPU."""
    base = dict(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(overrides)
    return ModelConfig(**base)


def default_model(**overrides) -> ModelConfig:
    """The preset of `mgr train`: L=2, d=128, H=4, T=128."""
    return ModelConfig(**overrides)
