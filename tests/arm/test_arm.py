"""The ARM tier: mgr on the XLA CPU backend of an aarch64 machine gives the x86 numbers.

CI runs this file under qemu user-mode emulation of linux/aarch64 (`.ci/arm/run_tier.sh`,
before the main suite), with `MGR_ARM_REFERENCE` pointing at the losses the same code
(`mgr.bench.armcheck`) produced natively on x86 in the same CI run. On a real ARM machine run it with
`uv run pytest -m arm tests/arm -o addopts=""`: without a reference file it checks that the
losses are finite and falling instead, and says so. The default suite deselects the `arm` marker.
"""

import importlib
import json
import math
import os
import pkgutil
import platform
from pathlib import Path

import pytest

IN_TIER = os.environ.get("MGR_ARM_TIER") == "1"  # set by .ci/arm/run_tier.sh

# tests/conftest.py points the compilation cache into the clone; the tier keeps it outside the
# clone (CI clones fresh, and emulated compiles are 10-27x slower), so honour its choice. This
# must run before the first compile, which is why it sits above the imports of the project.
if IN_TIER and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    from mgr.runtime import enable_compilation_cache

    enable_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])

import jax  # noqa: E402

from mgr.bench import armcheck  # noqa: E402

pytestmark = pytest.mark.arm

ARM_NAMES = ("aarch64", "arm64")  # Linux, macOS
CASES, MISSING = armcheck.default_cases()


def _reference() -> dict | None:
    path = os.environ.get(armcheck.REF_ENV)
    if not path:
        assert not IN_TIER, f"the ARM tier must pass the x86 reference in ${armcheck.REF_ENV}"
        return None
    return json.loads(Path(path).read_text())


def _log(line: str) -> None:
    """Append a line to the tier's results file, which run_tier.sh prints."""
    out = os.environ.get("MGR_ARM_RESULTS")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def test_packages_import():
    """Every module of the four packages imports: their whole dependency set has aarch64 wheels."""
    imported = []
    for top in ("mgr", "attention", "optim", "core"):
        pkg = importlib.import_module(top)
        imported.append(top)
        for mod in pkgutil.walk_packages(pkg.__path__, top + "."):
            importlib.import_module(mod.name)
            imported.append(mod.name)
    import attention
    import optim

    assert {"mgr.train", "mgr.model", "mgr.data", "mgr.train.checkpoint", "mgr.cli"} <= set(imported)
    assert "standard" in attention.names() and "adamw" in optim.names()


def test_platform_is_arm_on_the_cpu_backend():
    machine = platform.machine()
    if machine not in ARM_NAMES:
        assert not IN_TIER, f"the ARM tier ran on {machine}: the emulator was not used"
        pytest.skip(f"not an ARM CPU ({machine}); .ci/arm/run_tier.sh runs this under emulation")
    assert jax.default_backend() == "cpu"
    assert [d.platform for d in jax.devices()] == ["cpu"]


def test_run_record_names_the_cpu_architecture():
    """`summary.json` meta.device comes from `artifacts.provenance`: platform and CPU arch."""
    from mgr.runtime import artifacts

    device = artifacts.provenance("arm-check")["device"]
    assert device["platform"] == "cpu"
    assert device["cpu_arch"] == platform.machine()
    if IN_TIER:
        assert device["cpu_arch"] == "aarch64"


def test_cases_cover_a_second_algebra_and_optimizer():
    if MISSING:
        pytest.skip("; ".join(MISSING))
    algebras = {c.algebra for c in CASES}
    optimizers = {c.optimizer for c in CASES}
    assert "standard" in algebras and len(algebras) >= 2
    assert "adamw" in optimizers and len(optimizers) >= 2


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_short_training_matches_x86(case):
    ref = _reference()
    result = armcheck.short_run(case)
    losses = result["losses"]
    line = f"{platform.machine():>8} {case.key:<16} " + " ".join(f"{x:.7f}" for x in losses)
    if ref is None:
        _log(line + "  (no x86 reference: checked finite and falling)")
        assert all(math.isfinite(x) for x in losses), losses
        assert losses[-1] < losses[0], f"loss did not fall in {len(losses)} steps: {losses}"
        return
    assert case.key in ref["cases"], f"{case.key} missing from the reference ({sorted(ref['cases'])})"
    expected = ref["cases"][case.key]["losses"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses, expected))
    _log(f"{ref['cpu_arch']:>8} {case.key:<16} " + " ".join(f"{x:.7f}" for x in expected))
    _log(line + f"  max rel diff {worst:.1e} (compile {result['seconds']['compile']:.0f} s)")
    bad = armcheck.compare(losses, expected)
    assert not bad, f"{case.key} on {platform.machine()} differs from {ref['cpu_arch']}: " + "; ".join(bad)


def test_greedy_generation_matches_x86():
    """The inference engine's greedy tokens (compiled decode step, on-device argmax) are the x86
    tokens of the same model and prompt."""
    ref = _reference()
    got = armcheck.greedy_tokens()
    _log(f"{platform.machine():>8} greedy {got['tokens']} (min top-2 logit gap {got['margin']:.1e})")
    assert len(got["tokens"]) == armcheck.GREEDY_NEW
    if ref is None:
        assert all(0 <= t < 128 for t in got["tokens"]), got
        return
    expected = ref["greedy"]
    _log(f"{ref['cpu_arch']:>8} greedy {expected['tokens']}")
    assert got["tokens"] == expected["tokens"], (got, expected)
