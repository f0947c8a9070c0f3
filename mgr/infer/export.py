"""The export format: a directory loadable without the training stack.

    DIR/weights.safetensors   flat parameter names -> arrays (an int8 matrix `n` stores its
                              values under `n` and float32 scales under `n.scale`)
    DIR/tokenizer.model       the SentencePiece model the run was trained with
    DIR/config.json           format and version, the model config, tokenizer facts, the
                              quantisation, sha256 and size of every other file, where the
                              weights came from, their size and the validation CE of the export

An export is written into a hidden temporary directory next to DIR and renamed into place only
when complete, so DIR never holds half an export. Reading verifies every file against
config.json (present, same size and hash) and every tensor against the model config (names,
shapes, dtypes); any mismatch is one line: "export DIR is incomplete or corrupt: ...".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.errors import MgrError
from mgr.config import ModelConfig
from mgr.infer.weights import QUANTIZATIONS, Layout, QTensor, float32_bytes
from mgr.runtime.paths import atomic_write_bytes, file_digest

FORMAT, FORMAT_VERSION = "mgr-export", 1
WEIGHTS, TOKENIZER, CONFIG = "weights.safetensors", "tokenizer.model", "config.json"
SCALE_SUFFIX = ".scale"  # cannot collide: a parameter's name is never another's prefix


@dataclass
class Export:
    """An export read back and verified."""

    directory: Path
    config: dict  # config.json as written
    model_config: ModelConfig
    weights: dict[str, Any]  # name -> float32 array or QTensor (host numpy)
    tokenizer: Any
    quantization: str | None


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise MgrError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise MgrError(f"--out {out} exists and is not a directory")


@contextlib.contextmanager
def staging(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary directory beside `out` that becomes `out` when the block completes."""
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _readable_by_all(tmp)
        check_destination(out, overwrite)  # someone may have created it meanwhile
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.rename(old / out.name)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _readable_by_all(directory: Path) -> None:
    # mkdtemp and the atomic writes create owner-only modes; an export is meant to be shared
    # (served, copied), so it gets the modes a plain mkdir and open would have given.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def tensors(layout: Layout, weights: dict[str, Any]) -> dict[str, np.ndarray]:
    """The safetensors entries of `weights` (int8 values plus `.scale`, or float32)."""
    out: dict[str, np.ndarray] = {}
    for name in layout.names:
        w = weights[name]
        if isinstance(w, QTensor):
            out[name] = np.ascontiguousarray(w.q, np.int8)
            out[name + SCALE_SUFFIX] = np.ascontiguousarray(w.scale, np.float32)
        else:
            out[name] = np.ascontiguousarray(w, np.float32)
    return out


def write_files(directory: Path, model_cfg: ModelConfig, weights: dict[str, Any], tokenizer, *,
                quantization: str | None, source: dict) -> dict:
    """Write the weights and tokenizer into `directory`; returns config.json's content (not yet written)."""
    from safetensors.numpy import save_file

    layout = Layout.of(model_cfg)
    layout.check(weights, "export")
    save_file(tensors(layout, weights), str(directory / WEIGHTS), metadata={"format": FORMAT})
    atomic_write_bytes(directory / TOKENIZER, tokenizer.model_proto)
    files = {name: {"sha256": file_digest(directory / name), "bytes": (directory / name).stat().st_size}
             for name in (WEIGHTS, TOKENIZER)}
    f32 = float32_bytes(layout)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model_cfg.to_dict(),
        "tokenizer": {"file": TOKENIZER, "type": tokenizer.model_type, "vocab_size": tokenizer.vocab_size,
                      "digest": tokenizer.digest, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                      "pad_id": tokenizer.pad_id},
        "quantization": None if quantization is None else {
            "scheme": quantization, "symmetric": True, "scale_dtype": "float32",
            "granularity": "per output channel (per row for lookup tables)",
            "tensors": [n for n in layout.names if isinstance(weights[n], QTensor)]},
        "files": files,
        "size": {"weights_bytes": files[WEIGHTS]["bytes"], "float32_weights_bytes": f32,
                 "ratio_vs_float32": f32 / files[WEIGHTS]["bytes"],
                 "total_bytes": sum(f["bytes"] for f in files.values())},
        "source": source,
    }


def write_config(directory: Path, config: dict) -> None:
    atomic_write_bytes(Path(directory) / CONFIG, (json.dumps(config, indent=2) + "\n").encode())


def read_export(directory: Path, *, shown: str | None = None) -> Export:
    """Read and verify an export; every problem is one MgrError line naming the directory."""
    directory = Path(directory)
    label = shown or str(directory)

    def corrupt(why: str) -> MgrError:
        return MgrError(f"export {label} is incomplete or corrupt: {why}")

    if not directory.is_dir():
        raise MgrError(f"no export at {label}: not a directory")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except FileNotFoundError:
        raise corrupt(f"no {CONFIG}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(f"unreadable {CONFIG} ({type(e).__name__})") from None
    try:
        fmt, version = config["format"], config["format_version"]
        files, tok_facts, model = config["files"], config["tokenizer"], config["model"]
        quant = config["quantization"]
        listed = {name: (int(files[name]["bytes"]), str(files[name]["sha256"])) for name in (WEIGHTS, TOKENIZER)}
        scheme, quantized = (None, set()) if quant is None else (quant["scheme"], set(quant["tensors"]))
    except (KeyError, TypeError, ValueError) as e:
        raise corrupt(f"{CONFIG} lacks {e}") from None
    if fmt != FORMAT or version != FORMAT_VERSION:
        raise corrupt(f"format {fmt!r} version {version!r}; this mgr reads {FORMAT!r} version {FORMAT_VERSION}")
    if scheme not in (None, *QUANTIZATIONS):
        raise corrupt(f"unknown quantization {scheme!r}")
    try:
        model_cfg = ModelConfig.from_dict(model)
    except (MgrError, TypeError) as e:
        raise corrupt(f"bad model config ({e})") from None
    for name, (size, digest) in listed.items():
        path = directory / name
        if not path.is_file():
            raise corrupt(f"missing {name}")
        if path.stat().st_size != size or file_digest(path) != digest:
            raise corrupt(f"{name} does not match its sha256 in {CONFIG}")
    layout = Layout.of(model_cfg)
    weights = _read_weights(directory / WEIGHTS, layout, quantized, corrupt)
    tokenizer = _read_tokenizer(directory / TOKENIZER, tok_facts, model_cfg, corrupt)
    return Export(directory, config, model_cfg, weights, tokenizer, scheme)


def _read_weights(path: Path, layout: Layout, quantized: set[str], corrupt) -> dict[str, Any]:
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise corrupt(f"unreadable {WEIGHTS} ({type(e).__name__})") from None
    expected = set(layout.names) | {n + SCALE_SUFFIX for n in quantized}
    if set(stored) != expected:
        missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
        raise corrupt(f"{WEIGHTS} tensors missing {missing[:3]} / unexpected {extra[:3]}")
    weights: dict[str, Any] = {}
    for name in layout.names:
        if name in quantized:
            q, scale = stored[name], stored[name + SCALE_SUFFIX]
            if q.dtype != np.int8 or scale.dtype != np.float32:
                raise corrupt(f"{name} is {q.dtype} with {scale.dtype} scales, expected int8 and float32")
            weights[name] = QTensor(q, scale)
        else:
            if stored[name].dtype != np.float32:
                raise corrupt(f"{name} is {stored[name].dtype}, expected float32")
            weights[name] = stored[name]
    try:
        layout.check(weights, WEIGHTS)
    except MgrError as e:
        raise corrupt(str(e)) from None
    return weights


def _read_tokenizer(path: Path, facts: dict, model_cfg: ModelConfig, corrupt):
    from mgr.data.tokenizer import Tokenizer

    try:
        tok = Tokenizer(path.read_bytes(), str(facts["digest"]), str(facts["type"]))
    except (RuntimeError, OSError, KeyError, TypeError, MgrError) as e:
        raise corrupt(f"unreadable {TOKENIZER} ({type(e).__name__})") from None
    if tok.vocab_size != model_cfg.vocab_size:
        raise corrupt(f"{TOKENIZER} has {tok.vocab_size} pieces, the model {model_cfg.vocab_size}")
    return tok
