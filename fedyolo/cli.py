"""The `fedyolo` command. Each part mounts its commands here; heavy imports (torch, ORT) happen inside
the commands, so `fedyolo --help` and the device-side commands never load torch.

A known error (FedyoloError) prints one line and exits non-zero, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedyolo.runtime.errors import FedyoloError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="fedyolo: federated fine-tuning of small modules over one frozen on-device backbone.",
)
export_app = typer.Typer(no_args_is_help=True, help="PC side: turn a backbone + module into bundles.")
app.add_typer(export_app, name="export")
console = Console(stderr=True)


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` module options; values parsed as JSON where they can be (8, 0.1, ["q","v"])."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise FedyoloError(f"module option {pair!r} is not key=value; e.g. --option r=16")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _task_labels(task: str, data: Path | None) -> tuple[str, ...]:
    from fedyolo.tasks import BUILTIN_TASKS, load_task, task_from_file

    if data is not None:
        return task_from_file(data, name=task).labels
    if task in BUILTIN_TASKS:
        return load_task(task).labels
    raise FedyoloError(
        f"task {task!r} is not built in ({', '.join(BUILTIN_TASKS)}); give its labelled examples with "
        '--data FILE.jsonl (rows of {"text": ..., "label": ...})'
    )


@app.command("data")
def data_cmd(
    name: Annotated[str, typer.Argument(help="built-in task (topics, language) or a JSONL/CSV file")],
    out: Annotated[Path, typer.Option(help="where to write the examples (.jsonl or .csv)")],
    split: Annotated[str, typer.Option(help="train, test or all")] = "train",
    clients: Annotated[
        int | None, typer.Option(help="partition the train split among this many clients")
    ] = None,
    client: Annotated[int | None, typer.Option(help="write only this client's partition")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration: 0.1 skewed, 10 near IID")] = 1.0,
    seed: Annotated[int, typer.Option(help="partition seed")] = 0,
) -> None:
    """Write a built-in task's examples (or one client's share of them) as JSONL/CSV."""
    from fedyolo.tasks import data_command

    data_command(name, out, split, clients, alpha, seed, client)


@export_app.command("onnx")
def export_onnx_cmd(
    out: Annotated[Path, typer.Option(help="bundle folder: created, or extended with one more task")],
    task: Annotated[str, typer.Option(help="task id: a built-in task, or any name with --data")] = "topics",
    backbone: Annotated[
        str, typer.Option(help="minilm (bundled), tiny-bert, tiny-vit, or a local HF dir")
    ] = "minilm",
    module: Annotated[str, typer.Option(help="lora, adapter, prompt, head or full")] = "lora",
    data: Annotated[Path | None, typer.Option(help="JSONL/CSV of {text, label}: the task's labels")] = None,
    option: Annotated[list[str] | None, typer.Option(help="module option key=value, e.g. r=16")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd")] = "adamw",
    max_length: Annotated[int, typer.Option(help="tokens per example")] = 32,
    seed: Annotated[int, typer.Option(help="seed for the module's initial weights")] = 0,
    force: Annotated[bool, typer.Option(help="replace the task if the bundle already has it")] = False,
) -> None:
    """Export backbone + module as ONNX Runtime training artifacts into a bundle (backbone stored once)."""
    from fedyolo.export.pipeline import export_onnx

    labels = _task_labels(task, data)
    manifest = export_onnx(
        out, task, labels, backbone, module, _options(option), optimizer, max_length, seed, force
    )
    spec = manifest.tasks[task]
    ratio = manifest.backbone.full_model_bytes / max(spec.module_bytes, 1)
    print(
        f"exported task {task!r} ({module}, {len(labels)} labels) to {out}: module {spec.module_bytes / 1e3:.1f} KB, "
        f"backbone {manifest.backbone.file.bytes / 1e6:.1f} MB stored once ({ratio:.0f}x the module); "
        f"tasks in bundle: {', '.join(sorted(manifest.tasks))}"
    )


@export_app.command("peft")
def export_peft_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    task: Annotated[str, typer.Option(help="task id in the bundle")],
    out: Annotated[Path, typer.Option(help="folder for the PEFT adapter")],
    module: Annotated[
        Path | None, typer.Option(help="trained module.safetensors (default: the bundle's)")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="backbone path if the bundle's is not the default")
    ] = None,
) -> None:
    """Write a task's module as a PEFT adapter folder that `PeftModel.from_pretrained` loads."""
    from fedyolo.export.peft_export import export_peft

    path = export_peft(bundle, task, out, module, backbone)
    print(f"wrote PEFT adapter for task {task!r} to {path}")


@app.command("train")
def train_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    task: Annotated[str, typer.Option(help="task id in the bundle")],
    data: Annotated[Path | None, typer.Option(help="training data (JSONL/CSV; .npz for images)")] = None,
    test_data: Annotated[Path | None, typer.Option(help="held-out data to report accuracy on")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    save: Annotated[Path | None, typer.Option(help="write the trained module (safetensors) here")] = None,
) -> None:
    """Train a task's module locally on this CPU (ONNX Runtime, torch-free) and report held-out accuracy."""
    from fedyolo.runtime.train_command import train_command

    train_command(bundle, task, data, test_data, epochs, lr, batch_size, seed, save)


OPTIONAL_COMMANDS = ("fedyolo.fedserver.cli",)  # modules with a `register(app)`, where installed


def _mount_optional() -> None:
    """Server and client commands live with their parts; mount them when present."""
    for name in OPTIONAL_COMMANDS:
        try:
            part = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the part is there but broken: say so, do not hide its commands
                raise
            continue
        part.register(app)


def main() -> None:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _mount_optional()
    try:
        app()
    except FedyoloError as e:
        # One line, whatever the terminal width or the message: scripts and logs grep for it.
        message = " ".join(str(e).split())
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
