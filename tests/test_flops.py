"""XLA's FLOPs count (loops unrolled) against each algebra's analytic estimate.

XLA's cost analysis counts a loop body once; the budget counts the step lowered with loops
unrolled. A loop that escaped the unrolling (a scan over layers or key blocks) shows up here as
a count far below the analytic estimate.
"""

import pytest

import attention
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


def test_loops_are_charged_per_iteration():
    """Four reversible layers run in one scan: the count must grow with the layer count."""
    def count(layers):
        cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=layers, n_heads=4, n_kv_heads=4,
                          max_seq_len=T, attention="reversible")
        return step_flops(cfg, TrainConfig(), (B, T + 1))

    two, four, eight = count(2), count(4), count(8)
    assert (eight - four) == pytest.approx(2 * (four - two), rel=0.02) and four > two
