"""Validation of `POST /v1/completions` bodies: an OpenAI-compatible subset, checked by hand.

Accepted fields: `prompt` (a string, required), `max_tokens` (int >= 1, default 16), `temperature`
(finite number >= 0, default 1.0; 0 is greedy), `top_p` (in (0, 1]), `top_k` (int >= 0, 0 = off;
an extension), `seed` (int in [0, 2**32); absent: a fresh random seed per request, as OpenAI
samples differently on every call), `stream` (bool), `model` (must name the served model), `n`
(only 1) and `user` (metadata, ignored).

Every other field, OpenAI's included (`echo`, `stop`, `logprobs`, penalties, ...), is refused
with 400 naming it: a client must never silently get behaviour other than what it asked for.
Types are strict (`true` is not an integer, `"0.5"` is not a number), and NaN or Infinity,
which Python's json module would accept, are refused, since JSON has no spelling for them.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Any, Callable

SEED_LIMIT = 2 ** 32
DEFAULT_MAX_TOKENS = 16


class RequestError(Exception):
    """A refused request: HTTP status, one-line message, the offending field (or None)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.code, "param": self.param,
                          "code": None}}


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stream: bool = False
    model: str | None = None

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(SEED_LIMIT)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or RequestError(400)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "request body is not valid UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # NaN / Infinity
        raise RequestError(400, f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def _integer(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        # bool is a subclass of int in Python, but `true` is not an integer in JSON.
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(400, f"'{name}' must be an integer, got {_kind(v)}", name)
        if v < lo or (hi is not None and v >= hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
            raise RequestError(400, f"'{name}' must be {bound}, got {v}", name)
        return v
    return check


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RequestError(400, f"'{name}' must be a number, got {_kind(v)}", name)
    if not math.isfinite(v):  # 1e999 parses as inf
        raise RequestError(400, f"'{name}' must be finite, got {v}", name)
    return float(v)


def _temperature(name: str, v: Any) -> float:
    t = _number(name, v)
    if not t >= 0:
        raise RequestError(400, f"'{name}' must be >= 0 (0 is greedy), got {v}", name)
    return t


def _top_p(name: str, v: Any) -> float:
    p = _number(name, v)
    if not 0 < p <= 1:
        raise RequestError(400, f"'{name}' must be in (0, 1], got {v}", name)
    return p


def _string(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise RequestError(400, f"'{name}' must be a string, got {_kind(v)}", name)
    return v


def _boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise RequestError(400, f"'{name}' must be true or false, got {_kind(v)}", name)
    return v


def _only_one(name: str, v: Any) -> int:
    if _integer(1)(name, v) != 1:
        raise RequestError(400, f"'{name}' must be 1: one completion per request", name)
    return 1


# Field name -> checker (returns the value to use).
_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "prompt": _string, "max_tokens": _integer(1), "temperature": _temperature, "top_p": _top_p,
    "top_k": _integer(0), "seed": _integer(0, SEED_LIMIT), "stream": _boolean, "model": _string,
    "n": _only_one, "user": _string,
}
# Checked but not kept: `n` can only be 1 and `user` is metadata.
_CHECK_ONLY = frozenset({"n", "user"})


def _kind(v: Any) -> str:
    return "null" if v is None else {bool: "a boolean", str: "a string", list: "an array",
                                     dict: "an object"}.get(type(v), type(v).__name__)


def parse_completion(obj: dict[str, Any]) -> CompletionRequest:
    """A validated CompletionRequest from a decoded JSON object, or RequestError(400).

    Context limits (prompt + max_tokens) need the tokenizer and are checked by the server.
    """
    for name in obj:
        if name not in _FIELDS:
            raise RequestError(400, f"unknown field '{name}'; accepted fields: {', '.join(_FIELDS)}", name)
    if "prompt" not in obj:
        raise RequestError(400, "missing required field 'prompt'", "prompt")
    kept = {}
    for name, value in obj.items():
        # An explicit null means "the default" for optional fields, as in OpenAI's API.
        if value is None and name != "prompt":
            continue
        out = _FIELDS[name](name, value)
        if name not in _CHECK_ONLY:
            kept[name] = out
    return CompletionRequest(**kept)
