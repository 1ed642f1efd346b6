"""``likeness export onnx CHECKPOINT OUT_DIR``: the neural generator as ONNX graphs.

Writes ``avatar.onnx``, ``motion.onnx``, ``renderer.onnx`` and ``manifest.json``
(:mod:`avatar.deploy.onnx`), then (unless ``--no-check``) runs every graph in
onnxruntime on the CPU next to PyTorch at batch 1 and 3 and prints the largest
difference; above ``--tolerance`` the command fails (exit 1). Point ``avatar.checkpoint``
at OUT_DIR with ``avatar.runtime = "onnx"`` to serve the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from runtime.cli_common import err_console, handle_errors, print_table
from runtime.errors import InputError

export_app = typer.Typer(help="Export models for deployment (ONNX).", no_args_is_help=True)


@export_app.command("onnx")
@handle_errors
def export_onnx_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="a distilled student: save_pretrained folder or .safetensors")
    ],
    out_dir: Annotated[Path, typer.Argument(help="folder for the .onnx files (created)")],
    steps: Annotated[
        int, typer.Option(min=1, max=4, help="student steps unrolled in motion.onnx")
    ] = 2,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset")] = 17,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="compare with PyTorch after export")
    ] = True,
    tolerance: Annotated[
        float, typer.Option(min=0.0, help="largest allowed difference in the check")
    ] = 1e-3,
) -> None:
    """Export a student checkpoint's avatar encoder, motion chunk and renderer to ONNX."""
    from avatar.deploy.onnx import ExportOptions, OnnxExportError, export_checkpoint
    from avatar.models.errors import CheckpointError

    if not checkpoint.exists():
        raise InputError(f"{checkpoint}: no such checkpoint (a save_pretrained folder or file)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    try:
        result = export_checkpoint(checkpoint, out_dir, ExportOptions(steps=steps, opset=opset))
    except (OnnxExportError, CheckpointError) as err:
        raise InputError(str(err)) from None
    diffs: dict[str, float] = {}
    if check:
        from avatar.deploy.onnx_runner import OnnxRunner, OnnxRunnerOptions, parity_report
        from avatar.models.generator import DualBranchGenerator

        gen = DualBranchGenerator.from_pretrained(checkpoint)
        runner = OnnxRunner.load(out_dir, OnnxRunnerOptions(device="cpu"))
        diffs = parity_report(gen, runner)
    rows = []
    for name, path in result.files.items():
        size = f"{path.stat().st_size / 1e6:.2f}"
        rows.append([name, path.name, size, f"{diffs[name]:.2e}" if diffs else "not checked"])
    print_table(
        f"likeness export onnx ({steps} student steps, opset {opset})",
        ["graph", "file", "MB", "max |onnx - torch|"],
        rows,
    )
    err_console.print(f"wrote {result.out_dir}", markup=False, highlight=False)
    worst = max(diffs.values(), default=0.0)
    if worst > tolerance:
        err_console.print(
            f"likeness: error: onnxruntime differs from PyTorch by {worst:.2e} "
            f"(more than {tolerance:g})",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1)
