"""The cross-architecture check: a few training steps whose losses must not depend on the CPU.

`short_run(case)` trains a tiny decoder for a handful of steps through the project's own code
(`mgr.train.build_program`: the Decoder's initialiser, the registered optimizer, the AOT-compiled
donated step) on fixed synthetic batches and returns the per-step losses. The ARM tier calls it
twice with literally the same code: natively on x86 to write the reference
(`python -m mgr.bench.armcheck --out ref.json`), and under aarch64 emulation in `tests/arm/`, which
compares the two within 1e-5 relative. See markdown_documentation/arm.md.

Everything is sized for emulation, where each XLA compile (eager ops included) costs 10-27x
its native time: one small model and one compiled step per case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REF_ENV = "MGR_ARM_REFERENCE"  # path of the x86 reference JSON in the ARM tier
RTOL = 1e-5
STEPS, BATCH, SEQ = 4, 2, 16
PREFERRED_ALGEBRAS = ("quaternion", "octonion", "tropical", "simplicial")
PREFERRED_OPTIMIZERS = ("muon", "hoss")


@dataclass(frozen=True)
class Case:
    algebra: str
    optimizer: str

    @property
    def key(self) -> str:
        return f"{self.algebra}-{self.optimizer}"


def _pick(registered: list[str], preferred: tuple[str, ...], exclude: str) -> str | None:
    others = [n for n in registered if n != exclude]
    return next((n for n in preferred if n in others), others[0] if others else None)


def default_cases() -> tuple[list[Case], list[str]]:
    """The cases to compare and the reasons for any that are missing.

    Two compiles cover four plug-ins: standard attention with AdamW (the defaults), and a
    non-standard algebra (quaternion when registered) with a second optimizer (Muon when
    registered; Muon also runs AdamW on the embedding, head and norms). Each compiled step costs
    20-40 s of CPU under emulation, so every extra case counts against the tier's 5-minute
    budget.
    """
    import attention
    import optim

    algebra = _pick(attention.names(), PREFERRED_ALGEBRAS, "standard")
    opt = _pick(optim.names(), PREFERRED_OPTIMIZERS, "adamw")
    missing = []
    if algebra is None:
        missing.append(f"no attention algebra other than standard is registered ({attention.names()})")
    if opt is None:
        missing.append(f"no optimizer other than adamw is registered ({optim.names()})")
    cases = [Case("standard", "adamw")]
    if algebra or opt:
        cases.append(Case(algebra or "standard", opt or "adamw"))
    return cases, missing


def configs(case: Case):
    """The tiny model and the optimizer settings of one case."""
    from mgr.config import ModelConfig, TrainConfig

    model = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        max_seq_len=SEQ, mlp_ratio=2, attention=case.algebra)
    train = TrainConfig(optimizer=case.optimizer, schedule="constant", learning_rate=1e-2,
                        warmup_steps=0, steps=STEPS, seed=0, grad_clip=1.0)
    return model, train


def batches(vocab: int, seed: int = 0) -> np.ndarray:
    """`[STEPS, B, T+1]` int32: each row counts up by one from a random start (mod vocab).

    A different batch every step, yet learnable in a few steps, so the losses also show that
    training makes progress where no reference exists.
    """
    rng = np.random.default_rng(seed)
    start = rng.integers(0, vocab, size=(STEPS, BATCH, 1))
    return ((start + np.arange(SEQ + 1)) % vocab).astype(np.int32)


def short_run(case: Case) -> dict:
    """Train `case` for STEPS steps; the losses (float, one per step, before its update) and timings."""
    import jax

    from mgr.train import build_program

    model_cfg, train_cfg = configs(case)
    data = batches(model_cfg.vocab_size)
    t0 = time.perf_counter()
    prog = build_program(model_cfg, train_cfg, (BATCH, SEQ + 1), STEPS)
    t1 = time.perf_counter()
    state, losses = prog.state, []
    for batch in data:
        state, metrics = prog.step_fn(state, jax.device_put(batch))
        losses.append(metrics["loss"])
    losses = [float(x) for x in jax.device_get(losses)]
    t2 = time.perf_counter()
    return {**asdict(case), "losses": losses,
            "seconds": {"build": round(t1 - t0, 3), "compile": round(prog.compile_seconds, 3),
                        "steps": round(t2 - t1, 3)}}


GREEDY_PROMPT, GREEDY_NEW = tuple(range(3, 3 + 8)), 8


def greedy_tokens() -> dict:
    """Greedy tokens of an untrained standard decoder (the first case's shape, seed 0) through the
    inference engine: its one compiled decode step and on-device sampling (the 8-token prompt is
    shorter than a prefill chunk, so only the step compiles: one compile under emulation).

    `margin` is the smallest gap between the two best logits along the way: a gap far above
    float32 rounding is what makes the tokens comparable across architectures at all.
    """
    import numpy as np

    from mgr.infer import SamplingParams, random_engine

    model_cfg, _ = configs(Case("standard", "adamw"))
    engine = random_engine(model_cfg, None, seed=0)
    tokens = engine.generate(list(GREEDY_PROMPT), SamplingParams(max_new_tokens=GREEDY_NEW,
                                                                 temperature=0.0, stop_at_eos=False))
    logits = np.asarray(engine.logits(np.asarray([list(GREEDY_PROMPT) + tokens[:-1]], np.int32)))[0]
    top2 = np.sort(logits[len(GREEDY_PROMPT) - 1:], axis=-1)[:, -2:]
    return {"tokens": [int(t) for t in tokens], "margin": float(np.min(top2[:, 1] - top2[:, 0]))}


def run_all(cases: list[Case] | None = None) -> dict:
    """Every case, plus what machine and software produced the numbers."""
    import jax

    from mgr.runtime import env

    missing: list[str] = []
    if cases is None:
        cases, missing = default_cases()
    return {"cpu_arch": platform.machine(), "device": env.device_info(),
            "versions": env.versions(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "backend": jax.default_backend(), "missing": missing,
            "cases": {c.key: short_run(c) for c in cases}, "greedy": greedy_tokens()}


def compare(losses: list[float], reference: list[float], rtol: float = RTOL) -> list[str]:
    """Human-readable mismatches (empty when every loss agrees within `rtol`)."""
    if len(losses) != len(reference):
        return [f"{len(losses)} losses vs {len(reference)} in the reference"]
    return [f"step {i}: {a!r} vs reference {b!r} (rel {abs(a - b) / abs(b):.2e})"
            for i, (a, b) in enumerate(zip(losses, reference))
            if not (math.isfinite(a) and abs(a - b) <= rtol * abs(b))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mgr.bench.armcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON record here (default: stdout)")
    ap.add_argument("--cache-dir", type=Path, help="persistent JAX compilation cache directory")
    args = ap.parse_args(argv)
    if args.cache_dir:
        from mgr.runtime import enable_compilation_cache

        enable_compilation_cache(args.cache_dir)
    record = run_all()
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    for key, res in record["cases"].items():
        print(f"{record['cpu_arch']} {key}: " + " ".join(f"{x:.7f}" for x in res["losses"]), file=sys.stderr)
    print(f"{record['cpu_arch']} greedy: {record['greedy']['tokens']}", file=sys.stderr)
    for why in record["missing"]:
        print(f"armcheck: case missing: {why}", file=sys.stderr)
    if not args.out:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
