"""The options every `fedyolo export` of a task shares (onnx, executorch), declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

BundleOut = Annotated[Path, typer.Option(help="bundle folder: created, or extended with one more task")]
TaskName = Annotated[str, typer.Option(help="task id: a built-in task, or any name with --data")]
Backbone = Annotated[str, typer.Option(help="minilm (bundled), tiny-bert, tiny-vit, or a local HF dir")]
ModuleKind = Annotated[str, typer.Option(help="lora, adapter, prompt, head or full")]
TaskData = Annotated[
    Path | None, typer.Option(help="the task's data, for its labels (JSONL/CSV; .npz for images)")
]
ModuleOptions = Annotated[list[str] | None, typer.Option(help="module option key=value, e.g. r=16")]
Optimizer = Annotated[str, typer.Option(help="adamw or sgd")]
MaxLength = Annotated[int, typer.Option(help="tokens per example")]
Seed = Annotated[int, typer.Option(help="seed for the module's initial weights")]
BackboneDtype = Annotated[
    str,
    typer.Option(
        help="float32, or int8: the frozen backbone stored and run as int8 (0.38x the bytes, int8 GEMMs; "
        "the module still trains in fp32; ORT backend only, no browser form)"
    ),
]
Force = Annotated[bool, typer.Option(help="replace the task if the bundle already has it")]
