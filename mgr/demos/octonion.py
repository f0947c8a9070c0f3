"""Demo `octonion`: Cayley–Dickson octonions keep norms but not associativity.

Shares its checks with the quaternion demo (mgr/demos/quaternion.py): compositions of `steps`
random unit octonions, bracketed left-nested ((u1 u2) u3)... and right-nested, stay on the unit
sphere yet disagree with each other; random associators are O(1) while the Moufang identities
and Artin's theorem hold; in the registered module the defined bracketing q̂ (conj(k̂) v) is an
isometric transport and differs from (q̂ conj(k̂)) v. See markdown_documentation/octonion.md.
"""

from __future__ import annotations

from attention.hypercomplex import OCTONION
from mgr.demos.base import DemoResult, demo
from mgr.demos.quaternion import run_algebra


@demo("octonion", "unit octonions: norms survive long compositions, associativity fails, "
      "Moufang and Artin hold, rotor transport is isometric", default_steps=1000)
def octonion_demo(seed: int, steps: int) -> DemoResult:
    return run_algebra(OCTONION, seed, steps)
