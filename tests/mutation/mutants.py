"""The mutant list (`mutants.toml`) as data: loading, validation and the apply check.

Shared by the runner (`run.py`) and the default-suite guard (`tests/test_mutants.py`), so
both read the list with the same rules. Pure standard library: no JAX, no project imports.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MUTANTS_TOML = HERE / "mutants.toml"
REQUIRED = ("id", "file", "find", "replace", "tests", "why")
OPTIONAL = ("expect", "reason", "timeout")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repo root
    find: str  # must occur exactly once in `file`
    replace: str
    tests: tuple[str, ...]  # pytest arguments: node ids / paths, optionally "-k", "EXPR"
    why: str
    expect: str = "caught"  # or "survive": an accepted (equivalent) mutant, with `reason`
    reason: str = ""
    timeout: float | None = None

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    def test_paths(self) -> list[str]:
        """The node ids / paths among `tests` (the argument after "-k" is an expression)."""
        out, skip = [], False
        for arg in self.tests:
            if skip:
                skip = False
            elif arg == "-k":
                skip = True
            else:
                out.append(arg)
        return out


def load(path: Path = MUTANTS_TOML) -> list[Mutant]:
    """Every `[[mutant]]` of the list; a malformed entry raises ValueError naming it."""
    raw = tomllib.loads(path.read_text(encoding="utf-8")).get("mutant", [])
    out = []
    for i, entry in enumerate(raw):
        name = entry.get("id", f"#{i}")
        missing = [k for k in REQUIRED if k not in entry]
        unknown = [k for k in entry if k not in REQUIRED + OPTIONAL]
        if missing or unknown:
            raise ValueError(f"mutant {name}: missing {missing}, unknown {unknown}")
        if not isinstance(entry["tests"], list) or not entry["tests"]:
            raise ValueError(f"mutant {name}: tests must be a non-empty list")
        if entry.get("expect", "caught") not in ("caught", "survive"):
            raise ValueError(f"mutant {name}: expect must be 'caught' or 'survive'")
        if entry.get("expect") == "survive" and not entry.get("reason"):
            raise ValueError(f"mutant {name}: an accepted survivor needs a reason")
        out.append(Mutant(**{**entry, "tests": tuple(entry["tests"])}))
    return out


def occurrences(m: Mutant, root: Path = REPO) -> int:
    """How often `find` occurs in the mutant's file under `root` (-1: no such file)."""
    path = root / m.file
    if not path.is_file():
        return -1
    return path.read_text(encoding="utf-8").count(m.find)


def apply(m: Mutant, source: str) -> str:
    """The mutated text of `source` (which must hold `find` exactly once)."""
    if source.count(m.find) != 1:
        raise ValueError(f"mutant {m.id}: find occurs {source.count(m.find)} times in {m.file}")
    return source.replace(m.find, m.replace, 1)


def node_exists(node: str, root: Path = REPO) -> bool:
    """Whether a node id `path[::Class]::name[param]` names a file (and test) that exists.

    The function check is textual (`def name(`), which is enough to notice a renamed test.
    """
    path, *parts = node.split("::")
    file = root / path
    if not file.exists():
        return False
    if not parts:
        return True
    name = parts[-1].split("[", 1)[0]
    text = file.read_text(encoding="utf-8")
    return f"def {name}(" in text
