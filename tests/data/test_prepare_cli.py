"""`mgr data prepare` end to end through the CLI: output accepted by list_shards, cleaning per
type, dedup, and bad input as one line with exit 2 and nothing written."""

import json

from typer.testing import CliRunner

from mgr.cli import app
from mgr.data.corpus import list_shards
from mgr.data.prepare.classify import kind_of
from mgr.data.prepare.clean import clean
from tests.helpers import assert_user_error

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()

PY = "def f(x):\n    if x:\n\t\treturn  x   +1\n    return 0\n"


def _inputs(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.py").write_text(PY)
    rows = [{"text": f"Zdanie numer {i} o kotach i psach, które mieszkają w domu."} for i in range(40)]
    rows.append(rows[0])  # exact duplicate
    (tmp_path / "in" / "b.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    return tmp_path / "in"


def test_prepare_writes_a_corpus_train_accepts(tmp_path):
    src = _inputs(tmp_path)
    r = runner.invoke(app, ["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--shard-mb", "0.001",
                            "--no-near-dup"])
    assert r.exit_code == 0, r.output
    shards = list_shards(tmp_path / "o")
    assert len(shards) >= 2
    card = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert card["duplicates"]["exact"] == 1 and card["documents"]["read"] == 42
    import pyarrow.parquet as pq
    texts = [t for p in shards for t in pq.read_table(p)["text"].to_pylist()]
    assert PY in texts  # code indentation survives byte for byte
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_clean_and_classify():
    assert clean(PY, "python") == PY
    assert clean("a  \t b\x07\n\n\n\nc", "prose") == "a b\n\nc"
    assert kind_of("package main\n\nimport (\n\t\"fmt\"\n)\nfunc main() {}\n") == "go"
    assert kind_of("import os\nfrom x import y\ndef f():\n  pass\n") == "python"
    assert kind_of("#!/bin/bash\nif true; then\n  echo\nfi\n") == "bash"
    assert kind_of("SELECT 1;\nINSERT INTO t VALUES (1);\n") == "sql"
    assert kind_of("To jest zwykłe zdanie po polsku, bez kodu.") == "prose"
    assert kind_of("{}{}[]<<>>==;;$$||") == "other"


def test_bad_input_is_one_line_exit_2(tmp_path):
    src = _inputs(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02")
    out = tmp_path / "o"
    cases = [([str(tmp_path / "bad.jsonl")], ["bad.jsonl:2"]),
             ([str(tmp_path / "bin.txt")], ["binary"]),
             ([str(src / "b.jsonl"), "--field", "body"], ["no field 'body'"]),
             ([str(src), "--min-chars", "100000", "--max-chars", "200000"], ["filtered away"])]
    for args, words in cases:
        r = runner.invoke(app, ["data", "prepare", *args, "--out", str(out)])
        assert_user_error(r, *words)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    out.mkdir()
    assert_user_error(runner.invoke(app, ["data", "prepare", str(src), "--out", str(out)]), "--overwrite")
