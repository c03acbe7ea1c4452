"""`fedyolo export executorch`: the same options as `export onnx`, plus the program's batch."""

from __future__ import annotations

from typing import Annotated

import typer

from fedyolo.cli.export_options import (
    Backbone,
    BundleOut,
    Force,
    MaxLength,
    ModuleKind,
    ModuleOptions,
    Optimizer,
    Seed,
    TaskData,
    TaskName,
)
from fedyolo.runtime.manifest import TaskSpec


def export_executorch_cmd(
    out: BundleOut,
    task: TaskName = "topics",
    backbone: Backbone = "minilm",
    module: ModuleKind = "lora",
    data: TaskData = None,
    option: ModuleOptions = None,
    optimizer: Optimizer = "adamw",
    max_length: MaxLength = 32,
    batch: Annotated[
        int, typer.Option(min=1, help="examples per program call (memory is planned for it)")
    ] = 8,
    seed: Seed = 0,
    force: Force = False,
    kernels: Annotated[
        str,
        typer.Option(
            help="whose kernels run the GEMMs, permutes and GELU: fedyolo (fast: a BLAS on every core; fedyolo's "
            "runtime builds it with its runner, `make setup` or `python -m fedyolo.runtime.et_program build`) or "
            "executorch (slower; for stock ExecuTorch runtimes, such as the Android AAR, that lack fedyolo's library)"
        ),
    ] = "fedyolo",
) -> None:
    """Export backbone + module as an ExecuTorch training program (and the ONNX artifacts, if the task is
    new) into a bundle; the frozen backbone's tensors go to one shared backbone.ptd."""
    from fedyolo.cli import _options, _task_labels
    from fedyolo.export.executorch_bundle import export_executorch

    labels = _task_labels(task, data)
    manifest = export_executorch(
        out, task, labels, backbone, module, _options(option), optimizer, max_length, batch, seed, force,
        kernels=kernels,
    )  # fmt: skip
    spec = manifest.tasks[task]
    data_file = manifest.backbone.executorch_data
    print(
        f"exported task {task!r} ({module}) for ExecuTorch to {out}: program {spec.files['program.pte'].bytes / 1e3:.1f} KB "
        f"(batch {spec.executorch_batch}{_lengths(spec)}), backbone.ptd {(data_file.bytes if data_file else 0) / 1e6:.1f} MB stored once; "
        f"tasks in bundle: {', '.join(sorted(manifest.tasks))}"
    )


def _lengths(spec: TaskSpec) -> str:
    """The text lengths the program takes, for the export's summary line."""
    if spec.input.kind != "text":
        return ""
    low = spec.executorch_min_length or spec.input.max_length
    return f", {low}-{spec.input.max_length} tokens" if low < spec.input.max_length else f", {low} tokens"
