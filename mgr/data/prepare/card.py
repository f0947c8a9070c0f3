"""The data card: DIR/dataset.json (machine-readable) and DIR/README.md (the same, as tables)."""

from __future__ import annotations

from pathlib import Path


def _table(head: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render(card: dict) -> str:
    parts = ["# Dataset card", "", f"Made by `mgr data prepare` (format {card['format']}).", "",
             "## Inputs", "", _table(("file", "sha256"), [(i["path"], i["sha256"][:16]) for i in card["inputs"]]),
             "", "## Documents", "",
             _table(("read", "kept", "exact duplicates", "near duplicates", "characters kept"),
                    [(card["documents"]["read"], card["documents"]["kept"], card["duplicates"]["exact"],
                      card["duplicates"]["near"], card["characters"])]),
             "", "Dropped by reason:", "",
             _table(("reason", "documents"), sorted(card["dropped"].items())),
             "", "## Content types (share of characters)", "",
             _table(("type", "share", "target"), [(k, f"{v:.3f}", card["mix_target"].get(k, "–"))
                                                  for k, v in sorted(card["type_share"].items())]),
             "", "## Languages of prose (share of prose characters)", "",
             _table(("lang", "share"), [(k, f"{v:.3f}") for k, v in sorted(card["lang_share"].items())]),
             "", "## Shards (the last is validation)", "",
             _table(("file", "rows", "bytes", "sha256"),
                    [(s["name"], s["rows"], s["bytes"], s["sha256"][:16]) for s in card["shards"]])]
    if card.get("tokenizer"):
        t = card["tokenizer"]
        parts += ["", f"## Tokenizer ({t['type']}, vocab {t['vocab_size']}, digest {t['digest']})", "",
                  _table(("type", "tokens per character"),
                         [(k, f"{v:.3f}") for k, v in sorted(t["fertility"].items())])]
    return "\n".join(parts) + "\n"


def write(out: Path, card: dict) -> None:
    import json

    from mgr.runtime.paths import atomic_write_bytes  # not runtime.artifacts: that imports JAX (~100 MB)

    atomic_write_bytes(out / "dataset.json", (json.dumps(card, indent=2, allow_nan=False) + "\n").encode())
    atomic_write_bytes(out / "README.md", render(card).encode())
