"""Content type (prose, python, bash, sql, go, other) and language of a document.

The type comes from the file extension when it has one of the known ones; otherwise (jsonl/csv/
parquet rows, extensionless files) from content heuristics, scored on the first 4000 characters:
- go: `package NAME` on a line and `func ` or `import (`;
- python: a `#!...python` shebang, or at least two lines starting with `def `, `class `, `import `,
  `from X import`;
- bash: a `#!/bin/sh|bash` shebang, or `fi`/`done`/`esac` lines together with `then`/`do`;
- sql: two or more statements starting with SELECT/INSERT/CREATE TABLE/UPDATE/DELETE, case-insensitive;
- prose: at least 60% of characters letters or spaces and few symbol characters;
- other: the rest (data dumps, markup soup).
Language: py3langid (offline, model bundled in the wheel) on prose only; code gets none.
"""

from __future__ import annotations

import re

KINDS = ("prose", "python", "bash", "sql", "go", "other")
_BY_EXT = {".py": "python", ".sh": "bash", ".bash": "bash", ".sql": "sql", ".go": "go",
           ".txt": "prose", ".md": "prose", ".markdown": "prose", ".rst": "prose"}

_GO = re.compile(r"^package \w+\s*$", re.M)
_PY = re.compile(r"^(def \w+\(|class \w+[:(]|import \w+|from [\w.]+ import )", re.M)
_SH_END = re.compile(r"^\s*(fi|done|esac)\s*$", re.M)
_SH_OPEN = re.compile(r"\b(then|do)\s*$", re.M)
_NOT_LETTER = re.compile(r"[^\w\s]|[\d_]")  # what is left: letters and whitespace
_SQL = re.compile(r"^\s*(select|insert\s+into|create\s+table|update|delete\s+from)\b", re.M | re.I)


def kind_of(text: str, ext: str = "") -> str:
    if ext.lower() in _BY_EXT:
        return _BY_EXT[ext.lower()]
    head = text[:4000]
    first = head.split("\n", 1)[0]
    if first.startswith("#!"):
        if "python" in first:
            return "python"
        if re.search(r"\b(ba|z|da)?sh\b", first):
            return "bash"
    if _GO.search(head) and ("func " in head or "import (" in head):
        return "go"
    if len(_PY.findall(head)) >= 2:
        return "python"
    if _SH_END.search(head) and _SH_OPEN.search(head):
        return "bash"
    if len(_SQL.findall(head)) >= 2:
        return "sql"
    if not head:
        return "other"
    letters = len(_NOT_LETTER.sub("", head))
    symbols = sum(head.count(c) for c in "{}[]<>=;$|\\")
    if letters / len(head) >= 0.6 and symbols / len(head) < 0.03:
        return "prose"
    return "other"


_identifier = None


def lang_of(text: str, kind: str) -> str | None:
    if kind != "prose":
        return None
    global _identifier
    if _identifier is None:  # loading the model costs ~0.3 s: only when prose is met
        import py3langid

        _identifier = py3langid
    return _identifier.classify(text[:2000])[0]
