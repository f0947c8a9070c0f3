"""Tokenizer options: user-defined symbols kept whole, character coverage, both in the cache key,
on `DataConfig` and the CLI (train, bench-fixed-flops, data prepare)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import MgrError
from mgr.config import DataConfig
from mgr.data import corpus, tokenizer

SYMBOLS = ("<user>", "</user>", "<code>")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGR_CACHE_DIR", str(tmp_path_factory.mktemp("tok_options")))
        cfg = DataConfig(vocab_size=512, max_corpus_bytes=300_000, n_shards=3)
        return corpus.list_shards(corpus.build_embedded_corpus(cfg))


@pytest.fixture(scope="module")
def with_symbols(shards, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGR_CACHE_DIR", str(tmp_path_factory.mktemp("tok_options_cache")))
        return tokenizer.train_or_load(shards[:1], 400, "bpe", user_symbols=SYMBOLS)


def test_user_symbols_are_one_id_each_and_never_split(with_symbols):
    tok = with_symbols
    ids = {s: tok.encode(s) for s in SYMBOLS}
    assert all(len(v) == 1 for v in ids.values()), ids
    text = "<user>def f():\n    return 1</user><code>x"
    pieces = [tok.id_to_piece(i) for i in tok.encode(text)]
    for s in SYMBOLS:
        assert s in pieces  # inside running text too, not merged with its neighbours


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(SYMBOLS), st.text(max_size=12)), max_size=6))
def test_round_trip_stays_exact_with_user_symbols(with_symbols, parts):
    text = "".join(parts)
    assert with_symbols.decode(with_symbols.encode(text)) == text


def test_options_are_in_the_cache_key_and_defaults_keep_the_old_key(shards):
    base = tokenizer.tokenizer_digest(shards[:1], 400, "bpe")
    assert tokenizer.tokenizer_digest(shards[:1], 400, "bpe", tokenizer.trainer_options()) == base
    assert tokenizer.tokenizer_digest(shards[:1], 400, "bpe", tokenizer.trainer_options((), 0.9995)) == base
    variants = {tokenizer.tokenizer_digest(shards[:1], 400, "bpe", tokenizer.trainer_options(*o))
                for o in (((), 1.0), (("<a>",), None), (("<a>", "<b>"), None))}
    assert len(variants) == 3 and base not in variants


@pytest.mark.parametrize("kw, match", [
    (dict(user_symbols=("<a b>",)), "without spaces or commas"),
    (dict(user_symbols=("<a>", "<a>")), "distinct"),
    (dict(user_symbols=("",)), "non-empty"),
    (dict(character_coverage=0.5), "character_coverage"),
])
def test_bad_options_are_one_line(kw, match):
    with pytest.raises(MgrError, match=match):
        DataConfig(**kw)


def test_cli_flags_reach_the_config_and_bad_values_exit_2(tmp_path):
    from typer.testing import CliRunner

    from helpers import assert_user_error
    from mgr.cli import app

    run = CliRunner().invoke
    assert_user_error(run(app, ["train", "--user-symbols", "<a>,<a>", "--steps", "1",
                                "--artifacts-dir", str(tmp_path)]), "distinct")
    (tmp_path / "in.txt").write_text("Zażółć gęślą jaźń. " * 20)
    assert_user_error(run(app, ["data", "prepare", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"),
                                "--vocab-size", "400", "--character-coverage", "0.1"]), "character_coverage")
    assert not (tmp_path / "o").exists()
    assert DataConfig.from_dict(DataConfig(user_symbols=SYMBOLS).to_dict()).user_symbols == SYMBOLS
