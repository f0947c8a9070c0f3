"""Cleaning that respects the content type.

Everywhere: Unicode NFC and removal of control characters other than newline and tab (they break
tokenizers and terminals and carry no text). Prose only: runs of spaces/tabs collapse to one space
and three or more newlines to a paragraph break. Code keeps its bytes (indentation is syntax in
Python and meaning in Go/Bash), apart from NFC and control characters.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_NEWLINES = re.compile(r"\n{3,}")


def clean(text: str, kind: str) -> str:
    # Controls go first: removing one between a letter and a combining mark after NFC would leave
    # the pair uncomposed.
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text.replace("\r\n", "\n")))
    if kind == "prose":
        text = _SPACES.sub(" ", text)
        text = "\n".join(line.strip() for line in text.split("\n"))
        text = _NEWLINES.sub("\n\n", text).strip()
    return text
