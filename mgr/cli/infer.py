"""`mgr generate` and `mgr export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from core.errors import MgrError
from mgr.cli.app import app, user_errors


@app.command()
@user_errors
def generate(
    run: Optional[str] = typer.Option(None, "--run",
                                      help="a training run: its id under ARTIFACTS_DIR/train, or its directory"),
    model: Optional[Path] = typer.Option(None, "--model", help="an export directory (see mgr export)"),
    checkpoint: str = typer.Option("final", help="with --run: best, final (the newest step) or a step number"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="the text to continue (default: empty)"),
    prompt_file: Optional[Path] = typer.Option(None, help="read the prompt from this file"),
    max_new_tokens: int = typer.Option(64, help="tokens to generate; prompt + these must fit the context"),
    temperature: float = typer.Option(1.0, help="0 is greedy"),
    top_k: Optional[int] = typer.Option(None, help="sample among the k most likely tokens (0: off)"),
    top_p: Optional[float] = typer.Option(None, help="sample from the smallest set with this much mass (1: off)"),
    seed: int = typer.Option(0),
    stream: bool = typer.Option(False, help="print tokens as they are generated"),
    truncate_left: bool = typer.Option(False, help="drop the oldest prompt tokens when the prompt does not fit"),
    stats: bool = typer.Option(True, help="a last line on stderr: tokens, time to first token, tokens/s"),
):
    """Continue a prompt with a trained run (--run) or an export (--model)."""
    from mgr.infer import SamplingParams, generate_text, load_engine
    from mgr.runtime import enable_compilation_cache

    if prompt is not None and prompt_file is not None:
        raise MgrError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise MgrError(f"cannot read --prompt-file {prompt_file}: {type(e).__name__}") from None
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    params.validate()
    enable_compilation_cache()
    engine = load_engine(run=run, artifacts_dir=artifacts_dir, checkpoint=checkpoint, model_dir=model)

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = generate_text(engine, prompt or "", params, truncate_left=truncate_left, emit=emit, stream=stream)
    emit("\n")
    if stats:
        typer.echo(result.line(), err=True)


@app.command()
@user_errors
def export(
    run: str = typer.Argument(..., help="a training run: its id under ARTIFACTS_DIR/train, or its directory"),
    out: Path = typer.Option(..., "--out", help="the export directory to create"),
    checkpoint: str = typer.Option("final", help="best, final (the newest step) or a step number"),
    quantize: Optional[str] = typer.Option(None, help="int8: weight-only, per output channel"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
    val_batches: int = typer.Option(8, help="validation batches the export is scored on"),
):
    """Write a run's weights (safetensors), config and tokenizer to a directory mgr generate --model reads."""
    from mgr.infer import export_run
    from mgr.runtime import enable_compilation_cache

    enable_compilation_cache()
    cfg = export_run(run, out, artifacts_dir=artifacts_dir, checkpoint=checkpoint, quantize=quantize,
                     overwrite=overwrite, val_batches=val_batches)
    size, src, ev = cfg["size"], cfg["source"], cfg["evaluation"]
    kind = cfg["quantization"]["scheme"] if cfg["quantization"] else "float32"
    typer.echo(f"exported run '{src['run']}' step {src['step']} ({src['checkpoint']}) as {kind} to {out}")
    typer.echo(f"size on disk: {size['total_bytes'] / 1e6:.3f} MB (weights {size['weights_bytes'] / 1e6:.3f} MB; "
               f"as float32 {size['float32_weights_bytes'] / 1e6:.3f} MB, ratio {size['ratio_vs_float32']:.2f}x)")
    if ev["status"] == "ok":
        typer.echo(f"validation CE on {ev['batches']} batches ({ev['tokens']:,} tokens): original "
                   f"{ev['val_ce_original']:.4f}, export {ev['val_ce_export']:.4f} "
                   f"({100 * ev['relative_difference']:+.3f}% relative)")
    else:
        typer.echo(f"validation CE not measured: {ev['reason']}")
