"""Exports: float32 reproduces the run exactly, int8 is 3.5x smaller and within 1% CE, a damaged
export is refused in one line, and loading one needs no training code."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from core.errors import MgrError
from mgr.cli import app
from mgr.config import ModelConfig, TrainConfig
from mgr.infer import QTensor, load_engine
from mgr.infer.export import CONFIG, TOKENIZER, WEIGHTS, read_export, write_config, write_files
from mgr.infer.weights import Layout
from mgr.runtime.paths import file_digest

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    """The run exported through the CLI, as float32 and as int8 (with their printed reports)."""
    base = tmp_path_factory.mktemp("exports")
    out = {}
    for kind, extra in (("float32", []), ("int8", ["--quantize", "int8"])):
        result = invoke("export", trained_run.run_id, "--out", base / kind, "--artifacts-dir", trained_run.root,
                        *extra)
        assert result.exit_code == 0, result.output
        out[kind] = (base / kind, result.stdout)
    return out


def run_params(trained_run) -> dict:
    """The run's final parameters restored with the trainer's own checkpointer (whole train state)."""
    from mgr.train import make_step
    from mgr.train.checkpoint import Checkpointer

    cfg = trained_run.summary["config"]
    model_cfg = ModelConfig.from_dict(cfg["model"])
    template = jax.eval_shape(make_step(model_cfg, TrainConfig.from_dict(cfg["train"]), 24).init)
    ckpt = Checkpointer(trained_run.run_dir / "checkpoints")
    try:
        state, _, _ = ckpt.restore(template, 24)
    finally:
        ckpt.close()
    return {n: np.asarray(w) for n, w in Layout.of(model_cfg).flatten(state["params"]).items()}


def test_float32_export_reproduces_the_run_exactly(trained_run, exports):
    directory, printed = exports["float32"]
    assert "size on disk" in printed and "validation CE on 4 batches" in printed
    expected = run_params(trained_run)
    from_run = load_engine(run=trained_run.run_id, artifacts_dir=trained_run.root)
    from_export = load_engine(model_dir=directory)
    for name, w in expected.items():
        assert np.array_equal(np.asarray(from_run.weights[name]), w), name
        assert np.array_equal(np.asarray(from_export.weights[name]), w), name
    tokens = np.asarray([from_export.encode("To be, or not to be, that is the question:")])
    assert np.array_equal(from_export.logits(tokens), from_run.logits(tokens))
    ev = json.loads((directory / CONFIG).read_text())["evaluation"]
    assert ev["val_ce_export"] == ev["val_ce_original"] and ev["batches"] == 4
    # The export's CE is the trainer's own validation CE of that checkpoint (all 4 batches here).
    assert ev["val_ce_original"] == pytest.approx(trained_run.summary["results"]["val_ce_final"], rel=1e-5)


def test_int8_export_keeps_int8_in_memory_and_is_within_one_percent(trained_run, exports):
    directory, printed = exports["int8"]
    config = json.loads((directory / CONFIG).read_text())
    ev = config["evaluation"]
    assert abs(ev["relative_difference"]) < 0.01 and ev["val_ce_export"] != ev["val_ce_original"]
    assert f"{100 * ev['relative_difference']:+.3f}% relative" in printed
    engine = load_engine(model_dir=directory)
    original = run_params(trained_run)
    layout = Layout.of(engine.model_config)
    for name in layout.names:
        w = engine.weights[name]
        if len(layout.shapes[name]) < 2:
            assert w.dtype == np.float32 and np.array_equal(np.asarray(w), original[name])
            continue
        assert isinstance(w, QTensor) and w.q.dtype == np.int8, name
        q, scale = np.asarray(w.q, np.float32), np.asarray(w.scale)
        # one scale per output column of a kernel, per row of the embedding table
        rows, cols = original[name].shape[-2:]
        assert scale.shape[-2:] == ((rows, 1) if name == "embed.table" else (1, cols)), (name, scale.shape)
        # symmetric: each channel's largest weight maps to +-127, and every weight is within
        # half a step of its dequantised value
        assert np.allclose(np.max(np.abs(q), axis=-1 if name == "embed.table" else -2), 127)
        assert np.all(np.abs(q * scale - original[name]) <= scale / 2 * (1 + 1e-5)), name
    assert engine.weight_bytes < 0.3 * sum(w.nbytes for w in original.values())


def test_int8_files_are_at_least_3_5x_smaller_where_matrices_dominate(trained_run, exports, tmp_path):
    # d_model 128: matrices hold almost every parameter (the tiny run's d_model 32 gives 3.46x,
    # its per-channel scales and tensor headers weighing relatively more).
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=32)
    layout = Layout.of(cfg)
    rng = np.random.default_rng(0)
    weights = {n: rng.normal(size=s).astype(np.float32) for n, s in layout.shapes.items()}
    tok = read_export(exports["float32"][0]).tokenizer
    sizes = {}
    for kind, w, q in (("float32", weights, None), ("int8", layout.quantize(weights), "int8")):
        (tmp_path / kind).mkdir()
        config = write_files(tmp_path / kind, cfg, w, tok, quantization=q, source={})
        write_config(tmp_path / kind, config)
        sizes[kind] = (tmp_path / kind / WEIGHTS).stat().st_size
    assert sizes["float32"] / sizes["int8"] >= 3.5, sizes
    back = read_export(tmp_path / "float32").weights
    assert all(np.array_equal(back[n], weights[n]) for n in layout.names)


def _damaged(src, tmp_path, how):
    d = tmp_path / "damaged"
    shutil.copytree(src, d)
    how(d)
    return d


def _flip_byte(d):
    data = bytearray((d / WEIGHTS).read_bytes())
    data[-3] ^= 0xFF
    (d / WEIGHTS).write_bytes(bytes(data))


def _wrong_shape_with_matching_hash(d):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / WEIGHTS))
    tensors["head.kernel"] = tensors["head.kernel"][:, :-1].copy()
    save_file(tensors, str(d / WEIGHTS))
    config = json.loads((d / CONFIG).read_text())
    config["files"][WEIGHTS] = {"sha256": file_digest(d / WEIGHTS), "bytes": (d / WEIGHTS).stat().st_size}
    (d / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("how, words", [
    (lambda d: (d / TOKENIZER).unlink(), f"missing {TOKENIZER}"),
    (lambda d: (d / CONFIG).unlink(), f"no {CONFIG}"),
    (lambda d: (d / CONFIG).write_text("{not json"), f"unreadable {CONFIG}"),
    (_flip_byte, "does not match its sha256"),
    (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:100]), "does not match its sha256"),
    (_wrong_shape_with_matching_hash, "head.kernel has shape (32, 511)"),
], ids=["no-tokenizer", "no-config", "bad-config", "flipped-byte", "truncated", "wrong-shape"])
def test_a_damaged_export_is_one_line(exports, tmp_path, how, words):
    d = _damaged(exports["float32"][0], tmp_path, how)
    with pytest.raises(MgrError, match="is incomplete or corrupt") as err:
        read_export(d)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_damaged_export_is_refused_by_generate(exports, tmp_path):
    d = _damaged(exports["int8"][0], tmp_path, _flip_byte)
    result = invoke("generate", "--model", d, "--prompt", "To be")
    assert result.exit_code == 2 and "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error: export ") and "incomplete or corrupt" in err and "\n" not in err


def test_loading_an_export_needs_no_training_code(exports):
    # Not orbax: grain imports it, and the tokenizer's package (mgr.data) imports grain.
    code = ("import sys; from mgr.infer import load_engine; "
            f"e = load_engine(model_dir={str(exports['int8'][0])!r}); "
            "print(sorted(m for m in sys.modules if m.startswith(('mgr.train', 'optim'))), e.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "int8"], out.stdout
