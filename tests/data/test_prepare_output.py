"""`mgr data prepare` output: deterministic shards, the validation shard, card digests, cleaning
per content type (Hypothesis), atomic replacement on failure, and the compact dedup key set."""

import hashlib
import json
import unicodedata

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mgr.data.prepare as prep
from mgr.data.corpus import list_shards
from mgr.data.prepare import PrepareOptions, prepare
from mgr.data.prepare import shards as shards_mod
from mgr.data.prepare.clean import clean
from mgr.data.prepare.dedup import HashSet64
from tests.data.test_prepare_inputs import code, prose


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    (d / "a.jsonl").write_text("".join(json.dumps({"text": prose(i)}) + "\n" for i in range(80)))
    (d / "b.py").write_text(code(1))
    return d


def shard_texts(out, card):
    return [t for s in card["shards"] for t in pq.read_table(out / s["name"])["text"].to_pylist()]


def test_same_seed_same_bytes_other_seed_other_order(corpus, tmp_path, monkeypatch):
    opts = dict(shard_mb=0.005)
    a = prepare([str(corpus)], tmp_path / "a", PrepareOptions(seed=1, **opts))
    # Flushing spill buffers after every line must not change a byte of the output.
    monkeypatch.setattr(shards_mod, "BUFFER_BYTES", 1)
    b = prepare([str(corpus)], tmp_path / "b", PrepareOptions(seed=1, **opts))
    c = prepare([str(corpus)], tmp_path / "c", PrepareOptions(seed=2, **opts))
    assert len(a["shards"]) >= 3
    assert [sha(tmp_path / "a" / s["name"]) for s in a["shards"]] == [sha(tmp_path / "b" / s["name"]) for s in b["shards"]]
    ta, tc = shard_texts(tmp_path / "a", a), shard_texts(tmp_path / "c", c)
    assert sorted(ta) == sorted(tc) and ta != tc


def test_shards_validation_shard_and_card_digests(corpus, tmp_path):
    card = prepare([str(corpus)], tmp_path / "o", PrepareOptions(shard_mb=0.005))
    out = tmp_path / "o"
    listed = list_shards(out)
    assert len(listed) >= 2 and [p.name for p in listed] == [s["name"] for s in card["shards"]]
    assert listed[-1].name == card["shards"][-1]["name"]  # the card's last shard is the one held out
    for s in card["shards"]:
        assert s["sha256"] == sha(out / s["name"]) and s["bytes"] == (out / s["name"]).stat().st_size
        assert s["rows"] == pq.ParquetFile(out / s["name"]).metadata.num_rows
    inputs = sorted(p for p in corpus.iterdir())
    assert [i["path"] for i in card["inputs"]] == [str(p) for p in inputs]
    assert [i["sha256"] for i in card["inputs"]] == [sha(p) for p in inputs]
    assert json.loads((out / "dataset.json").read_text()) == card
    assert card["shards"][-1]["sha256"][:16] in (out / "README.md").read_text()
    assert sum(s["rows"] for s in card["shards"]) == card["documents"]["kept"] == 81


def test_cleaning_in_the_pipeline(tmp_path):
    decomposed = "Zażo\u0301łc gęślą jaźń"  # o + combining acute: NFC makes it ó
    (tmp_path / "p.txt").write_text(f"  {decomposed}\x07  i   tak\t\tdalej.\n\n\n\nKoniec.  ")
    py = "def f(x):\n\tif x:\n\t    return 'cafe\u0301'\x0b\n    return  0\n"
    (tmp_path / "c.py").write_text(py)
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text(prose(i))
    card = prepare([str(tmp_path / n) for n in ("p.txt", "c.py", "f0.txt", "f1.txt", "f2.txt")], tmp_path / "o",
                   PrepareOptions(shard_mb=0.0005))
    texts = set(shard_texts(tmp_path / "o", card))
    assert "Zażółc gęślą jaźń i tak dalej.\n\nKoniec." in texts
    assert "def f(x):\n\tif x:\n\t    return 'caf\u00e9'\n    return  0\n" in texts


_CONTROL = [chr(c) for c in (*range(0, 9), *range(11, 32), *range(127, 160))]
code_line = st.tuples(st.text(alphabet=" \t", max_size=6),
                      st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                                                     blacklist_characters=" "), max_size=20))


@settings(max_examples=150, deadline=None)
@given(st.lists(code_line, min_size=1, max_size=8), st.sampled_from(("python", "bash", "sql", "go", "other")))
def test_code_keeps_indentation_byte_for_byte(lines, kind):
    text = "\n".join(indent + body for indent, body in lines)
    got = clean(text, kind)
    assert got == unicodedata.normalize("NFC", text)
    assert [ln[:len(ln) - len(ln.lstrip(" \t"))] for ln in got.split("\n")] == [i for i, _ in lines]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.one_of(st.sampled_from(_CONTROL + [" ", "\t", "\n", "\u0301", "e", "ó", "\u00a0"]),
                                  st.characters(blacklist_categories=("Cs",))), max_size=60),
       st.sampled_from(("prose", "python")))
@example("e\x07\u0301", "python")  # a control between a letter and its combining mark
def test_every_type_is_nfc_without_control_characters(text, kind):
    got = clean(text, kind)
    assert unicodedata.is_normalized("NFC", got) and not any(c in got for c in _CONTROL)
    if kind == "prose":
        assert "  " not in got and "\t" not in got and "\n\n\n" not in got and got == got.strip()


def _fail_midway(real):
    def write_shards(rows, out, total, shard_bytes):
        paths = real(iter([next(rows), next(rows)]), out, total, shard_bytes)  # part of the data written
        assert paths
        raise RuntimeError("simulated crash while writing shards")
    return write_shards


def test_interrupted_run_leaves_nothing_and_keeps_the_old_output(corpus, tmp_path, monkeypatch):
    out = tmp_path / "o"
    real = prep.write_shards
    monkeypatch.setattr(prep, "write_shards", _fail_midway(real))
    with pytest.raises(RuntimeError, match="simulated"):
        prepare([str(corpus)], out, PrepareOptions(shard_mb=0.005))
    assert sorted(tmp_path.iterdir()) == []  # neither --out nor a temp directory
    monkeypatch.setattr(prep, "write_shards", real)
    old = prepare([str(corpus)], out, PrepareOptions(shard_mb=0.005, seed=1))
    before = {p.name: sha(p) for p in out.iterdir()}
    monkeypatch.setattr(prep, "write_shards", _fail_midway(real))
    with pytest.raises(RuntimeError):
        prepare([str(corpus)], out, PrepareOptions(shard_mb=0.005, seed=2, overwrite=True))
    assert {p.name: sha(p) for p in out.iterdir()} == before and sorted(tmp_path.iterdir()) == [out]
    monkeypatch.setattr(prep, "write_shards", real)
    new = prepare([str(corpus)], out, PrepareOptions(shard_mb=0.005, seed=2, overwrite=True))
    assert new["seed"] == 2 and json.loads((out / "dataset.json").read_text()) == new != old
    assert sorted(tmp_path.iterdir()) == [out]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=9), max_size=60), st.integers(1, 8))
def test_hashset64_is_a_set(batches, min_buffer):
    s, ref = HashSet64(min_buffer=min_buffer), set()
    for keys in batches:
        assert s.contains_any(keys) == any(k in ref for k in keys)
        s.add(keys)
        ref.update(keys)
    assert len(s) == len(ref) and all(s.contains_any([k]) for k in ref)
    assert np.all(s.main[1:] > s.main[:-1])  # sorted, no key twice


def test_spill_count_grows_with_the_input(tmp_path, monkeypatch):
    """Pass 2 holds one spill at a time, so a spill must stay near SPILL_BYTES at any input size."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": prose(i)}) + "\n" for i in range(400)))
    monkeypatch.setattr(shards_mod, "SPILL_BYTES", 4096)
    sizes = []
    real = shards_mod.Spill.shuffled

    def shuffled(self):
        sizes.extend(p.stat().st_size for p in self.paths)
        yield from real(self)

    monkeypatch.setattr(shards_mod.Spill, "shuffled", shuffled)
    prepare([str(tmp_path / "a.jsonl")], tmp_path / "o", PrepareOptions(shard_mb=0.05))
    size = (tmp_path / "a.jsonl").stat().st_size
    assert len(sizes) == -(-size // 4096) > 16 and max(sizes) < 4 * 4096
