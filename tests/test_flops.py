"""XLA's FLOPs count (loops unrolled) against each algebra's analytic estimate.

XLA's cost analysis counts a loop body once; the budget counts the step lowered with loops
unrolled. A loop that escaped the unrolling (a scan over layers or key blocks) shows up here as
a count far below the analytic estimate.
"""

import pytest

import attention
import ffn
from mgr.config import ModelConfig, TrainConfig
from mgr.train.flops import analytic_train_flops_per_step
from mgr.train import step_flops

B, T = 2, 64


@pytest.mark.parametrize("name", attention.names())
def test_counted_flops_agree_with_the_analytic_estimate(name):
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=T,
                      attention=name)
    counted = step_flops(cfg, TrainConfig(), (B, T + 1))
    analytic = analytic_train_flops_per_step(cfg, B, T)
    assert 0.6 < counted / analytic < 1.7, (counted, analytic)


@pytest.mark.parametrize("kind", ffn.names())
def test_counted_flops_agree_with_the_analytic_estimate_for_every_ffn(kind):
    """Every feed-forward kind on two of four layers (an MoE dropless, so every token's E slots
    run, and with capacity 1.25 and k = 2); the analytic count takes each kind's own entry."""
    for options in ({}, {"moe": {"capacity_factor": 1.25, "top_k": 2}}):
        cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=T,
                          ffn=("relu2", kind), ffn_options=options)
        counted = step_flops(cfg, TrainConfig(), (B, T + 1))
        analytic = analytic_train_flops_per_step(cfg, B, T)
        assert 0.85 < counted / analytic < 1.2, (kind, options, counted, analytic)


def test_loops_are_charged_per_iteration():
    """Reversible layers run in one scan: the count must grow linearly with the layer count, by
    what the analytic count says a layer costs (a scan charged once would add only the
    optimizer's per-parameter work, which is also linear in depth but ~100x smaller)."""
    def cfg(layers):
        return ModelConfig(vocab_size=512, d_model=64, n_layers=layers, n_heads=4, n_kv_heads=4,
                           max_seq_len=T, attention="reversible")

    two, four, eight = (step_flops(cfg(n), TrainConfig(), (B, T + 1)) for n in (2, 4, 8))
    assert (eight - four) == pytest.approx(2 * (four - two), rel=0.02) and four > two
    per_layer = (analytic_train_flops_per_step(cfg(4), B, T) - analytic_train_flops_per_step(cfg(2), B, T)) / 2
    assert 0.6 < (four - two) / 2 / per_layer < 1.7, ((four - two) / 2, per_layer)


def test_analytic_estimate_adds_up_per_layer():
    """The hand count of the 6N-style rule, no compilation: per layer the algebra's own entry plus
    the MLP's two D x 4D matmuls (2 FLOPs per multiply-add), or a whole-layer count where an
    algebra registers one; plus the head; a train step is 3x the forward (backward = 2x)."""
    from mgr.train.flops import analytic_forward_flops_per_token

    d, v, layers = 64, 512, 3
    for name in ("standard", "reversible"):
        cfg = ModelConfig(vocab_size=v, d_model=d, n_layers=layers, n_heads=4, n_kv_heads=4,
                          max_seq_len=T, attention=name)
        entry = attention.get(name)
        if entry.layer_flops is not None:
            layer = entry.layer_flops(cfg, T)
        else:
            layer = entry.flops_per_token(cfg.attention_dims(), cfg.algebra_config(name), T) + 65536.0
        forward = analytic_forward_flops_per_token(cfg, T)
        assert forward == pytest.approx(layers * layer + 65536.0), name  # head: 2 * 64 * 512
        assert analytic_train_flops_per_step(cfg, B, T) == pytest.approx(3 * B * T * forward)


def test_unrolled_counts_are_cached_per_program(tmp_path, monkeypatch):
    """A second count of the same program comes from the cache without unrolling anything; a
    different program (another loop length) is counted afresh; a damaged entry is recounted."""
    import contextlib

    import jax
    import jax.numpy as jnp

    import attention.base as base
    from mgr.train.trainer import counted_flops

    monkeypatch.setenv("MGR_CACHE_DIR", str(tmp_path))

    def program(n):
        return lambda x: base.scan(lambda c, _: (jnp.tanh(c @ c), None), x, length=n)[0]

    x = jax.ShapeDtypeStruct((16, 16), jnp.float32)
    first = counted_flops(program(3), x)
    assert first >= 3 * 2 * 16 ** 3  # three matmuls: the loop was unrolled

    @contextlib.contextmanager
    def no_unrolling():
        raise AssertionError("unrolled again although the count is cached")
        yield

    monkeypatch.setattr(base, "unrolled_loops", no_unrolling)
    assert counted_flops(program(3), x) == first  # a fresh function, the same program
    with pytest.raises(AssertionError, match="unrolled again"):
        counted_flops(program(5), x)  # another program is never answered from the cache
    monkeypatch.undo()
    monkeypatch.setenv("MGR_CACHE_DIR", str(tmp_path))
    for entry in (tmp_path / "flops").iterdir():
        entry.write_text("{not json")
    assert counted_flops(program(3), x) == first
