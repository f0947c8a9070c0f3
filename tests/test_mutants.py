"""The curated mutant list (tests/mutation/mutants.toml) still applies to the code.

Cheap and JAX-free: nothing is mutated or run here (that is `tests/mutation/run.py`). This only
keeps the list from rotting: when code or tests change, a `find` snippet that no longer occurs
exactly once, or a targeted test that was renamed, fails here instead of silently dropping out
of the mutation score.
"""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

import mutants as mlist  # noqa: E402

MUTANTS = mlist.load()
# Areas that must each have mutants (id prefixes), beyond one per registered algebra.
AREAS = {"base": 5, "nn": 1, "adamw": 1, "muon": 2, "partition": 1, "hoss": 2, "schedules": 2,
         "ordinal": 2, "decoder": 3, "loop": 2, "trainer": 2, "checkpoint": 2, "data": 3,
         "tokenizer": 1, "flops": 2}


def algebra_names() -> list[str]:
    """The algebras attention/__init__.py imports, read as text (no JAX import)."""
    text = (ROOT / "attention" / "__init__.py").read_text()
    return re.findall(r"^from attention import (\w+)", text, flags=re.M)


def test_the_list_is_large_unique_and_covers_every_area():
    ids = [m.id for m in MUTANTS]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    count = {area: sum(m.area == area for m in MUTANTS) for area in {m.area for m in MUTANTS}}
    names = algebra_names()
    assert len(names) == 12, names
    for name in names:
        assert count.get(name, 0) >= 2, f"algebra {name} needs at least 2 mutants"
    for area, least in AREAS.items():
        assert count.get(area, 0) >= least, f"area {area}: {count.get(area, 0)} < {least}"


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.id)
def test_mutant_applies_once_and_its_tests_exist(m):
    assert m.find != m.replace
    n = mlist.occurrences(m, ROOT)
    assert n == 1, f"{m.id}: find occurs {n} times in {m.file} (-1: no such file): re-anchor it"
    for arg in m.tests:
        assert not arg.startswith("-") or arg == "-k", f"{m.id}: only -k may be passed, got {arg}"
    paths = m.test_paths()
    assert paths and all(mlist.node_exists(p, ROOT) for p in paths), f"{m.id}: missing test in {paths}"
    assert m.expect == "caught" or m.reason
