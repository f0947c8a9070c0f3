"""`mgr data prepare` options: which files and rows are read, bad lines, length filters, near
duplicates and their threshold, and the mixture, each checked on the shards and the card."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from mgr.cli import app
from mgr.data.prepare import PrepareOptions, ReadOptions, prepare
from mgr.data.prepare.dedup import Dedup
from tests.helpers import assert_user_error

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
WORDS = "kot pies dom las rzeka góra miasto słońce woda chleb okno droga zima lato noc dzień".split()


def prose(seed: int, words: int = 60) -> str:
    rng = random.Random(seed)
    return f"Tekst {seed}. " + " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def code(seed: int, lines: int = 12) -> str:
    return "".join(f"def f_{seed}_{i}(x):\n    return x + {seed * 100 + i}\n" for i in range(lines))


def run(inputs, out, **kw) -> tuple[dict, list[dict]]:
    read = ReadOptions(**kw.pop("read", {}))
    card = prepare([str(p) for p in inputs], out, PrepareOptions(read=read, shard_mb=kw.pop("shard_mb", 0.001), **kw))
    rows = [r for s in card["shards"] for r in pq.read_table(out / s["name"]).to_pylist()]
    return card, rows


def test_include_and_exclude_globs_pick_directory_files(tmp_path):
    src = tmp_path / "src"
    files = [("a/x.py", code(1)), ("a/v.py", code(6)), ("a/y.md", prose(2)), ("b/z.txt", prose(3)),
             ("b/w.py", code(4)), ("top.txt", prose(5))]
    for rel, text in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    def names(card):
        return sorted(Path(p["path"]).relative_to(src).as_posix() for p in card["inputs"])

    card, rows = run([src], tmp_path / "o1", read={"include": ("*.py",)})
    assert names(card) == ["a/v.py", "a/x.py", "b/w.py"] and {r["text"] for r in rows} == {code(1), code(4), code(6)}
    card, _ = run([src], tmp_path / "o2", read={"exclude": ("b/*",)})
    assert names(card) == ["a/v.py", "a/x.py", "a/y.md", "top.txt"]
    card, _ = run([src], tmp_path / "o3", read={"include": ("a/*", "top.txt"), "exclude": ("*.md",)})
    assert names(card) == ["a/v.py", "a/x.py", "top.txt"]


def test_json_csv_tsv_parquet_columns_and_missing_column(tmp_path):
    texts = [prose(i) for i in range(12)]
    (tmp_path / "a.json").write_text(json.dumps([{"body": t, "n": i} for i, t in enumerate(texts[:3])]))
    (tmp_path / "b.csv").write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts[3:6])))
    (tmp_path / "c.tsv").write_text("body\tid\n" + "".join(f"{t}\t{i}\n" for i, t in enumerate(texts[6:9])))
    pq.write_table(pa.table({"id": [1, 2, 3], "body": texts[9:]}), tmp_path / "d.parquet")
    inputs = [tmp_path / n for n in ("a.json", "b.csv", "c.tsv", "d.parquet")]
    card, rows = run(inputs, tmp_path / "o", read={"field": "body", "column": "body"})
    assert sorted(r["text"] for r in rows) == sorted(texts) and card["documents"]["read"] == 12
    for name, flag in [("a.json", "--field"), ("b.csv", "--column"), ("c.tsv", "--column"), ("d.parquet", "--column")]:
        r = runner.invoke(app, ["data", "prepare", str(tmp_path / name), "--out", str(tmp_path / "x"),
                                "--field", "nope", "--column", "nope"])
        assert_user_error(r, name, "'nope'", flag)
    assert not (tmp_path / "x").exists()


def test_bad_json_lines_skipped_and_counted_or_named(tmp_path):
    lines = [json.dumps({"text": prose(i)}) for i in range(10)]
    lines[3], lines[7] = '{"text": "cut', "not json"
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    opts = PrepareOptions(read=ReadOptions(on_bad_line="skip"), shard_mb=0.001)
    for out in ("o1", "o2"):  # the same options twice: counts start at zero every run
        card = prepare([str(tmp_path / "a.jsonl")], tmp_path / out, opts)
        assert card["documents"]["bad_json_lines"] == 2 and card["documents"]["read"] == 8
    assert sum(s["rows"] for s in card["shards"]) == 8
    r = runner.invoke(app, ["data", "prepare", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "x")])
    assert_user_error(r, "a.jsonl:4", "--on-bad-line skip")
    r = runner.invoke(app, ["data", "prepare", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "x"),
                            "--on-bad-line", "ignore"])
    assert_user_error(r, "--on-bad-line", "'ignore'")


def test_length_filters_counted_by_reason(tmp_path):
    texts = [prose(i, words=w) for i, w in enumerate([2, 3, 40, 40, 40, 40, 400, 500])]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    lo, hi = max(map(len, texts[:2])) + 1, max(map(len, texts[2:6])) + 1
    # Over 4 bytes a character allows: counted, never read (reading it would fail on the last byte).
    (tmp_path / "big.txt").write_bytes(("ż" * (2 * hi)).encode() + b"\xff")
    (tmp_path / "edge.txt").write_text("ż" * (hi + 5))  # 2*hi+10 bytes: read, then too long
    card, rows = run([tmp_path / n for n in ("a.jsonl", "big.txt", "edge.txt")], tmp_path / "o", min_chars=lo,
                     max_chars=hi, near_dup_threshold=None)
    assert card["dropped"]["too_short"] == 2 and card["dropped"]["too_long"] == 4 and card["documents"]["read"] == 10
    assert all(lo <= len(r["text"]) <= hi for r in rows) and len(rows) == 4


def test_near_duplicate_removed_at_085_kept_at_099_and_without_near_dup(tmp_path):
    base = [prose(i, words=400) for i in range(6)]
    words = base[0].split(" ")
    near = " ".join(words[:200] + ["inne"] + words[201:])  # one word of 400: 5 shingles
    a, b = (set(Dedup(None).shingles(t)) for t in (base[0], near))
    assert 0.97 < len(a & b) / len(a | b) < 0.98
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in base + [near]))
    card, rows = run([tmp_path / "a.jsonl"], tmp_path / "o1", near_dup_threshold=0.85)
    assert card["duplicates"]["near"] == 1 and near not in {r["text"] for r in rows} and len(rows) == 6
    for i, threshold in enumerate((0.99, None)):
        card, rows = run([tmp_path / "a.jsonl"], tmp_path / f"o{i + 2}", near_dup_threshold=threshold)
        assert card["duplicates"]["near"] == 0 and near in {r["text"] for r in rows} and len(rows) == 7
    assert card["duplicates"]["near_threshold"] is None
    r = runner.invoke(app, ["data", "prepare", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "cli"),
                            "--shard-mb", "0.001", "--no-near-dup"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cli" / "dataset.json").read_text())["duplicates"]["near"] == 0


def test_mix_moves_type_shares_to_the_target(tmp_path):
    docs = [prose(i) for i in range(300)] + [code(i, lines=10) for i in range(300)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))

    def shares(rows):
        chars = {}
        for r in rows:
            chars[r["type"]] = chars.get(r["type"], 0) + len(r["text"])
        return {k: v / sum(chars.values()) for k, v in chars.items()}

    card, rows = run([tmp_path / "a.jsonl"], tmp_path / "o0", shard_mb=0.05)
    natural = shares(rows)["prose"]
    assert 0.35 < natural < 0.65 and abs(card["type_share"]["prose"] - natural) < 1e-9
    for i, target in enumerate((0.8, 0.2)):
        card, rows = run([tmp_path / "a.jsonl"], tmp_path / f"o{i + 1}", mix={"prose": target, "python": 1 - target},
                         shard_mb=0.05)
        got = shares(rows)
        assert abs(got["prose"] - target) < 0.06, got
        assert abs(card["type_share"]["prose"] - got["prose"]) < 1e-9 and card["dropped"]["mix_downsampled"] > 0
    card, rows = run([tmp_path / "a.jsonl"], tmp_path / "o3", mix={"python": 1.0}, shard_mb=0.05)
    assert {r["type"] for r in rows} == {"python"}


def test_bad_mix_is_one_line(tmp_path):
    (tmp_path / "a.txt").write_text(prose(1))
    for mix, words in [("prose=1,rust=1", ["unknown type 'rust'"]), ("prose=-1,go=2", ["'prose'", "non-negative"]),
                       ("prose=nan", ["'prose'", "finite"]), ("go=inf", ["'go'", "finite"]),
                       ("prose=abc", ["'prose'", "number"]), ("prose=0", ["zero"]), ("sql=1", ["sql", "no kept"])]:
        r = runner.invoke(app, ["data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--mix", mix])
        assert_user_error(r, "--mix", *words)
        assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
