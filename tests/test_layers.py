"""The layering of ARCHITECTURE.md, enforced: every project import points down the layers.

The check reads every module's source (imports inside functions included, since a lazy import
is still a dependency) and refuses an import of a module in the same or a higher layer, unless
both modules belong to the same package of that layer (a package may use its own parts).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. Names in one row are siblings that must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("mgr.cli",),
    ("mgr.demos",),
    ("mgr.bench",),
    ("mgr.infer",),
    ("mgr.train",),
    ("mgr.model", "mgr.data"),
    ("mgr.config", "mgr.runtime"),
    ("attention", "optim", "ffn"),
    ("core",),
]
PACKAGES = ("mgr", "attention", "optim", "ffn", "core")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Project modules named by every import statement of one module."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            # `from mgr import demos` imports the module mgr.demos, not only the package mgr.
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, the layer entry the module belongs to), or None for unlayered modules."""
    for i, row in enumerate(LAYERS):
        for entry in row:
            if module == entry or module.startswith(entry + "."):
                return i, entry
    return None


def violations(root: Path) -> list[str]:
    files = [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]
    known = {module_name(p, root) for p in files}
    found = []
    for path in files:
        src = module_name(path, root)
        here = layer_of(src)
        if here is None:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for dst in sorted(imported_modules(tree, src, path.name == "__init__.py", known)):
            there = layer_of(dst)
            if there is None or there[1] == here[1]:
                continue  # the package's own parts, or the bare top-level package `mgr`
            if there[0] <= here[0]:
                found.append(f"{path.relative_to(root)}: {src} imports {dst} "
                             f"({'a sibling' if there[0] == here[0] else 'a higher layer'})")
    return found


def test_every_import_points_down_the_layers():
    assert violations(ROOT) == []


def test_every_module_is_in_a_layer():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    unlayered = {module_name(p, ROOT) for p in files} - {"mgr"}
    assert {m for m in unlayered if layer_of(m) is None} == set()


def _copy_tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_an_upward_import_is_caught(tmp_path):
    root = _copy_tree(tmp_path)
    algebra = root / "attention" / "standard.py"
    # Lazy, inside a function, and through `from PACKAGE import MODULE`: all three must count.
    algebra.write_text(algebra.read_text() + "\n\ndef _leak():\n    from mgr import train\n")
    optimizer = root / "optim" / "adamw.py"
    optimizer.write_text(optimizer.read_text() + "\nimport attention.base\n")
    base = root / "core" / "nn.py"
    base.write_text(base.read_text() + "\nfrom mgr.config import ModelConfig\n")
    found = violations(root)
    assert any("attention.standard imports mgr.train" in v for v in found), found
    assert any("optim.adamw imports attention.base (a sibling)" in v for v in found), found
    assert any("core.nn imports mgr.config" in v for v in found), found
    assert len(found) == 3, found


def test_a_sibling_import_inside_mgr_is_caught(tmp_path):
    root = _copy_tree(tmp_path)
    data = root / "mgr" / "data" / "corpus.py"
    data.write_text(data.read_text() + "\nfrom mgr.model import Decoder\n")
    assert violations(root) == ["mgr/data/corpus.py: mgr.data.corpus imports mgr.model (a sibling)"]
