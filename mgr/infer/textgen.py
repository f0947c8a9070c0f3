"""Text in, text out: the library side of `mgr generate` (prompt handling, streaming, timing)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from mgr.infer.engine import Engine
from mgr.infer.sampling import SamplingParams


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    truncated: int  # prompt tokens dropped from the left
    seconds: float
    first_token_s: float | None  # time to the first new token, prefill included

    @property
    def tokens_per_second(self) -> float | None:
        """Decode rate after the first token (which carries the prefill)."""
        if self.first_token_s is None or self.new_tokens < 2 or self.seconds <= self.first_token_s:
            return None
        return (self.new_tokens - 1) / (self.seconds - self.first_token_s)

    def line(self) -> str:
        ttft = "–" if self.first_token_s is None else f"{self.first_token_s * 1000:.0f} ms"
        tps = self.tokens_per_second
        cut = f" ({self.truncated} dropped from the left)" if self.truncated else ""
        return (f"{self.new_tokens} new tokens after a {self.prompt_tokens}-token prompt{cut}; "
                f"time to first token {ttft}; " + ("–" if tps is None else f"{tps:.1f}") + " tokens/s after it")


def generate_text(engine: Engine, prompt: str, params: SamplingParams, *, truncate_left: bool = False,
                  emit: Callable[[str], None], stream: bool = False) -> GenerationStats:
    """Generate a completion of `prompt`, handing its text to `emit` (piece by piece with
    `stream`, else once at the end). Raises MgrError for bad knobs or a prompt that does not
    fit (unless `truncate_left`)."""
    params.validate(engine)
    full = engine.encode(prompt)
    ids = engine.check_prompt(full, params.max_new_tokens, truncate=truncate_left)
    t0 = time.perf_counter()
    first: list[float] = []
    new: list[int] = []

    def tokens():
        for token in engine.stream(ids, params):
            if not first:
                first.append(time.perf_counter() - t0)
            new.append(token)
            yield token

    if stream:
        for piece in engine.text_stream(tokens()):
            emit(piece)
    else:
        emit(engine.decode(list(tokens())))
    return GenerationStats(len(ids), len(new), len(full) - len(ids), time.perf_counter() - t0,
                           first[0] if first else None)
