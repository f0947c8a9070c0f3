"""`mgr data prepare`: turn the user's files into a corpus directory `mgr train --data` accepts.

prepare(inputs, out, options) -> card. Pass 1 streams every document through clean -> length
filter -> dedup (exact, then near) and spills it; the mixture is then fixed from the character
counts; pass 2 shuffles spill by spill, down-samples to the mixture and writes shards. Everything is
written into a temp directory beside `out` and renamed into place only when complete.

--mix type=w,...: target shares of CHARACTERS per content type (weights are normalised; types not
named are dropped). Reached by deterministic down-sampling only, never duplication: the largest total
T with w_k*T <= chars_k for every named type, each document of type k kept when its text hash falls
below w_k*T/chars_k. Achieved shares are in the card.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import MgrError

from mgr.data.prepare import card as card_mod
from mgr.data.prepare.classify import KINDS, kind_of, lang_of
from mgr.data.prepare.clean import clean
from mgr.data.prepare.dedup import Dedup
from mgr.data.prepare.readers import ReadOptions, input_files, iter_documents
from mgr.data.prepare.shards import Spill, spill_count, unit, write_shards

FORMAT = 1


@dataclass
class PrepareOptions:
    read: ReadOptions = field(default_factory=ReadOptions)
    min_chars: int = 1
    max_chars: int = 1_000_000
    near_dup_threshold: float | None = 0.85  # None: no near-duplicate removal
    mix: dict[str, float] = field(default_factory=dict)
    shard_mb: float = 64.0
    seed: int = 0
    spill_files: int = 0         # 0: grows with the input (shards.spill_count)
    overwrite: bool = False
    vocab_size: int = 0          # 0: no tokenizer (no fertility in the card)
    tokenizer_type: str = "bpe"
    user_symbols: tuple[str, ...] = ()
    character_coverage: float = 0.9995


def parse_mix(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    mix = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise MgrError(f"--mix: unknown type '{name}' (known: {', '.join(KINDS)})")
        try:
            mix[name] = float(w)
        except ValueError:
            raise MgrError(f"--mix: weight of '{name}' must be a number, got '{w}'") from None
        if not math.isfinite(mix[name]) or mix[name] < 0:
            raise MgrError(f"--mix: weight of '{name}' must be a non-negative finite number, got '{w}'")
    if sum(mix.values()) <= 0:
        raise MgrError("--mix: weights must not all be zero")
    return mix


def keep_fractions(chars: dict[str, int], mix: dict[str, float]) -> dict[str, float]:
    if not mix:
        return {k: 1.0 for k in chars}
    total_w = sum(mix.values())
    w = {k: v / total_w for k, v in mix.items() if v > 0}
    missing = [k for k in w if chars.get(k, 0) == 0]
    if missing:
        raise MgrError(f"--mix names {', '.join(missing)} but no kept document has that type")
    t = min(chars[k] / w[k] for k in w)
    return {k: (w[k] * t / chars[k] if k in w else 0.0) for k in chars}


def _check_options(o: PrepareOptions) -> None:
    if o.read.on_bad_line not in ("skip", "error"):
        raise MgrError(f"--on-bad-line must be 'skip' or 'error', got '{o.read.on_bad_line}'")
    if o.near_dup_threshold is not None and not 0 < o.near_dup_threshold <= 1:
        raise MgrError(f"--near-dup-threshold must be in (0, 1], got {o.near_dup_threshold}")
    if o.min_chars < 0 or o.max_chars < o.min_chars:
        raise MgrError("--min-chars/--max-chars: need 0 <= min <= max")
    if o.shard_mb <= 0:
        raise MgrError("--shard-mb must be positive")
    if o.vocab_size:  # the tokenizer options are checked where training runs check them
        from mgr.config import DataConfig

        DataConfig(vocab_size=o.vocab_size, tokenizer_type=o.tokenizer_type, user_symbols=o.user_symbols,
                   character_coverage=o.character_coverage)


def _pass1(files, o: PrepareOptions, spill: Spill) -> dict:
    dedup = Dedup(o.near_dup_threshold)
    st = {"read": 0, "kept": 0, "dropped": {"too_short": 0, "too_long": 0, "exact_duplicate": 0,
                                            "near_duplicate": 0}, "chars": {}, "lang_chars": {}}
    for src, raw in iter_documents(files, o.read):
        st["read"] += 1
        kind = kind_of(raw, Path(src).suffix if Path(src).suffix not in (".jsonl", ".json", ".csv", ".tsv",
                                                                          ".parquet") else "")
        text = clean(raw, kind)
        if len(text) < o.min_chars:
            st["dropped"]["too_short"] += 1
            continue
        if len(text) > o.max_chars:
            st["dropped"]["too_long"] += 1
            continue
        dup = dedup.check(text)
        if dup:
            st["dropped"][f"{dup}_duplicate"] += 1
            continue
        lang = lang_of(text, kind)
        spill.add(text, kind, lang)
        st["kept"] += 1
        st["chars"][kind] = st["chars"].get(kind, 0) + len(text)
    st["read"] += o.read.stats["too_long_files"]
    st["dropped"]["too_long"] += o.read.stats["too_long_files"]
    st["dedup_entries"] = len(dedup.exact)
    st["dedup_bytes"] = dedup.state_bytes()
    return st


def prepare(inputs: list[str], out: str | Path, options: PrepareOptions | None = None) -> dict:
    """Prepare `inputs` into corpus directory `out`; return the data card (also in out/dataset.json)."""
    from mgr.runtime.paths import file_digest

    o = options or PrepareOptions()
    _check_options(o)
    # A fresh copy: the caller's options are not written to, and counts start at zero every call.
    o = dataclasses.replace(o, read=dataclasses.replace(o.read, max_file_bytes=4 * o.max_chars,
                                                        stats={"bad_lines": 0, "too_long_files": 0}))
    out = Path(out)
    if out.exists() and not o.overwrite:
        raise MgrError(f"output '{out}' exists (use --overwrite to replace it)")
    files = input_files(inputs, o.read)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        spill_dir = tmp / ".spill"
        spill_dir.mkdir()
        spill = Spill(spill_dir, o.spill_files or spill_count(sum(p.stat().st_size for p in files)), o.seed)
        try:
            st = _pass1(files, o, spill)
        finally:
            spill.close()
        if st["kept"] == 0:
            raise MgrError(f"every document was filtered away ({st['read']} read; dropped: "
                           + ", ".join(f"{k}={v}" for k, v in st["dropped"].items() if v) + ")")
        frac = keep_fractions(st["chars"], o.mix)
        achieved: dict[str, int] = {}
        lang_chars: dict[str, int] = {}
        mixed_out = [0]

        def rows():
            for row in spill.shuffled():
                if unit(o.seed, row["text"], "mix") >= frac[row["type"]]:
                    mixed_out[0] += 1
                    continue
                achieved[row["type"]] = achieved.get(row["type"], 0) + len(row["text"])
                if row["lang"]:
                    lang_chars[row["lang"]] = lang_chars.get(row["lang"], 0) + len(row["text"])
                yield row

        expected = sum(int(c * frac[k]) for k, c in st["chars"].items())
        shards = write_shards(rows(), tmp, expected, int(o.shard_mb * 2 ** 20))
        shutil.rmtree(spill_dir)
        if len(shards) < 2:
            raise MgrError("too little data for two shards (a train and a validation shard); "
                           "give more input or a smaller --shard-mb")
        total = sum(achieved.values())
        prose = sum(lang_chars.values()) or 1
        import pyarrow.parquet as pq

        card = {"format": FORMAT,
                "inputs": [{"path": str(p), "sha256": file_digest(p), "bytes": p.stat().st_size} for p in files],
                "documents": {"read": st["read"], "kept": st["kept"] - mixed_out[0],
                              "bad_json_lines": o.read.stats["bad_lines"]},
                "dropped": {**st["dropped"], "mix_downsampled": mixed_out[0]},
                "duplicates": {"exact": st["dropped"]["exact_duplicate"], "near": st["dropped"]["near_duplicate"],
                               "near_threshold": o.near_dup_threshold},
                "dedup_state": {"documents": st["dedup_entries"], "bytes": st["dedup_bytes"]},
                "characters": total,
                "type_share": {k: v / total for k, v in achieved.items()},
                "mix_target": o.mix,
                "lang_share": {k: v / prose for k, v in lang_chars.items()},
                "shards": [{"name": p.name, "rows": pq.ParquetFile(p).metadata.num_rows,
                            "bytes": p.stat().st_size, "sha256": file_digest(p)} for p in shards],
                "seed": o.seed}
        if o.vocab_size:
            card["tokenizer"] = _fertility(shards, o)
        card_mod.write(tmp, card)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        return card
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fertility(shards: list[Path], o: PrepareOptions) -> dict:
    """Train (or load from cache) the tokenizer on the train shards; tokens per character per type,
    measured on the validation shard (text the tokenizer did not see)."""
    import pyarrow.parquet as pq

    from mgr.data.tokenizer import train_or_load

    tok = train_or_load(shards[:-1], o.vocab_size, o.tokenizer_type, user_symbols=o.user_symbols,
                        character_coverage=o.character_coverage)
    toks: dict[str, int] = {}
    chars: dict[str, int] = {}
    first = next(pq.ParquetFile(shards[-1]).iter_batches(batch_size=2000, columns=["text", "type"]))
    for row in first.to_pylist():
        toks[row["type"]] = toks.get(row["type"], 0) + len(tok.encode(row["text"]))
        chars[row["type"]] = chars.get(row["type"], 0) + len(row["text"])
    return {"type": o.tokenizer_type, "vocab_size": o.vocab_size, "digest": tok.digest,
            "fertility": {k: toks[k] / max(1, chars[k]) for k in toks}}
