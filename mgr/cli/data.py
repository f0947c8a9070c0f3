"""`mgr data prepare INPUT... --out DIR`: a thin layer over mgr.data.prepare."""

from __future__ import annotations

from typing import List, Optional

import typer

from mgr.cli.app import COVERAGE_HELP, USER_SYMBOLS_HELP, app, symbols, user_errors

data_app = typer.Typer(no_args_is_help=True, help="Prepare your own text into a corpus directory.")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@user_errors
def prepare_cmd(
    inputs: List[str] = typer.Argument(..., help="Files or directories (text, md, jsonl, json, csv, tsv, parquet)."),
    out: str = typer.Option(..., "--out", help="Output corpus directory."),
    field: str = typer.Option("text", help="Field of .jsonl/.json rows."),
    column: str = typer.Option("text", help="Column of .csv/.tsv/.parquet."),
    include: List[str] = typer.Option([], help="Glob a directory's files must match (repeatable)."),
    exclude: List[str] = typer.Option([], help="Glob of directory files to skip (repeatable)."),
    on_bad_line: str = typer.Option("error", help="Invalid JSON line: 'skip' (counted) or 'error'."),
    min_chars: int = typer.Option(1), max_chars: int = typer.Option(1_000_000),
    near_dup_threshold: float = typer.Option(0.85, help="MinHash Jaccard threshold for near duplicates."),
    no_near_dup: bool = typer.Option(False, "--no-near-dup", help="Skip near-duplicate removal."),
    mix: Optional[str] = typer.Option(None, help="Target character shares, e.g. prose=0.5,python=0.3,go=0.2."),
    shard_mb: float = typer.Option(64.0, help="Target shard size in MB (at least two shards)."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out when complete."),
    vocab_size: int = typer.Option(0, help="Train a tokenizer of this size and put fertility in the card (0: no)."),
    tokenizer: str = typer.Option("bpe", "--tokenizer", help="bpe or unigram."),
    user_symbols: Optional[str] = typer.Option(None, help=USER_SYMBOLS_HELP),
    character_coverage: float = typer.Option(0.9995, help=COVERAGE_HELP),
):
    """Read, clean, deduplicate, tag, mix, shuffle and shard INPUTs into DIR with a data card."""
    from mgr.data.prepare import PrepareOptions, ReadOptions, parse_mix, prepare

    opts = PrepareOptions(read=ReadOptions(field=field, column=column, include=tuple(include),
                                           exclude=tuple(exclude), on_bad_line=on_bad_line),
                          min_chars=min_chars, max_chars=max_chars,
                          near_dup_threshold=None if no_near_dup else near_dup_threshold,
                          mix=parse_mix(mix), shard_mb=shard_mb, seed=seed, overwrite=overwrite,
                          vocab_size=vocab_size, tokenizer_type=tokenizer, user_symbols=symbols(user_symbols),
                          character_coverage=character_coverage)
    card = prepare(inputs, out, opts)
    typer.echo(f"{out}: {len(card['shards'])} shards, {card['documents']['kept']} documents, "
               f"{card['characters']} characters (card: {out}/README.md)")
