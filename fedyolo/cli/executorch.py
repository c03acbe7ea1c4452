"""`fedyolo export executorch`: the same options as `export onnx`, plus the program's batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_executorch_cmd(
    out: Annotated[Path, typer.Option(help="bundle folder: created, or extended with one more task")],
    task: Annotated[str, typer.Option(help="task id: a built-in task, or any name with --data")] = "topics",
    backbone: Annotated[
        str, typer.Option(help="minilm (bundled), tiny-bert, tiny-vit, or a local HF dir")
    ] = "minilm",
    module: Annotated[str, typer.Option(help="lora, adapter, prompt, head or full")] = "lora",
    data: Annotated[
        Path | None, typer.Option(help="the task's data, for its labels (JSONL/CSV; .npz for images)")
    ] = None,
    option: Annotated[list[str] | None, typer.Option(help="module option key=value, e.g. r=16")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd")] = "adamw",
    max_length: Annotated[int, typer.Option(help="tokens per example")] = 32,
    batch: Annotated[
        int, typer.Option(min=1, help="examples per program call (memory is planned for it)")
    ] = 8,
    seed: Annotated[int, typer.Option(help="seed for the module's initial weights")] = 0,
    force: Annotated[bool, typer.Option(help="replace the task if the bundle already has it")] = False,
) -> None:
    """Export backbone + module as an ExecuTorch training program (and the ONNX artifacts, if the task is
    new) into a bundle; the frozen backbone's tensors go to one shared backbone.ptd."""
    from fedyolo.cli import _options, _task_labels
    from fedyolo.export.executorch_bundle import export_executorch

    labels = _task_labels(task, data)
    manifest = export_executorch(
        out, task, labels, backbone, module, _options(option), optimizer, max_length, batch, seed, force
    )
    spec = manifest.tasks[task]
    data_file = manifest.backbone.executorch_data
    print(
        f"exported task {task!r} ({module}) for ExecuTorch to {out}: program {spec.files['program.pte'].bytes / 1e3:.1f} KB "
        f"(batch {spec.executorch_batch}), backbone.ptd {(data_file.bytes if data_file else 0) / 1e6:.1f} MB stored once; "
        f"tasks in bundle: {', '.join(sorted(manifest.tasks))}"
    )
