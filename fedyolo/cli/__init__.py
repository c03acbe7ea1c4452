"""The `fedyolo` command. Each part mounts its commands here; heavy imports (torch, ORT) happen inside
the commands, so `fedyolo --help` and the device-side commands never load torch.

A known error (FedyoloError) prints one line and exits non-zero, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedyolo.cli.executorch import export_executorch_cmd
from fedyolo.cli.export_options import (
    Backbone,
    BackboneDtype,
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
from fedyolo.cli.extras import missing_extra, needs
from fedyolo.cli.plan_options import (
    AdaptiveClip,
    Aggregate,
    Backend,
    BatchSize,
    ClientLr,
    ClipNorm,
    ExampleCap,
    LocalEpochs,
    LrSchedule,
    ProximalMu,
    Rounds,
    ServerLr,
    ServerMomentum,
    Strategy,
    Trim,
)
from fedyolo.options import parse_pairs
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.plan import FederationPlan

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="fedyolo: federated fine-tuning of small modules over one frozen on-device backbone.",
)
export_app = typer.Typer(no_args_is_help=True, help="PC side: turn a backbone + module into bundles.")
app.add_typer(export_app, name="export")
from fedyolo.flower.command import flower_app  # noqa: E402  (typer only: Flower loads inside its commands)

app.add_typer(flower_app, name="flower")
console = Console(stderr=True)


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` module options (lists become tuples: a module's config is hashable)."""
    return {
        k: tuple(v) if isinstance(v, list) else v for k, v in parse_pairs(pairs, "--option", "r=16").items()
    }


def _task_labels(task: str, data: Path | None) -> tuple[str, ...]:
    from fedyolo.tasks import BUILTIN_TASKS, load_task
    from fedyolo.tasks.task import labels_from_file

    if data is not None:
        return labels_from_file(data)  # the same formats as `train` and `client`: JSONL, CSV, .npz
    if task in BUILTIN_TASKS:
        return load_task(task).labels
    raise FedyoloError(
        f"task {task!r} is not built in ({', '.join(BUILTIN_TASKS)}); give its labelled examples with "
        '--data FILE.jsonl (rows of {"text": ..., "label": ...}; a .npz for images)'
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
@needs("export", "export")
def export_onnx_cmd(
    out: BundleOut,
    task: TaskName = "topics",
    backbone: Backbone = "minilm",
    module: ModuleKind = "lora",
    data: TaskData = None,
    option: ModuleOptions = None,
    optimizer: Optimizer = "adamw",
    max_length: MaxLength = 32,
    seed: Seed = 0,
    force: Force = False,
    backbone_dtype: BackboneDtype = "float32",
) -> None:
    """Export backbone + module as ONNX Runtime training artifacts into a bundle (backbone stored once)."""
    from fedyolo.export.pipeline import export_onnx

    labels = _task_labels(task, data)
    manifest = export_onnx(
        out, task, labels, backbone, module, _options(option), optimizer, max_length, seed, force,
        backbone_dtype=backbone_dtype,
    )  # fmt: skip
    spec = manifest.tasks[task]
    ratio = manifest.backbone.full_model_bytes / max(spec.module_bytes, 1)
    print(
        f"exported task {task!r} ({module}, {len(labels)} labels) to {out}: module {spec.module_bytes / 1e3:.1f} KB, "
        f"backbone {manifest.backbone.file.bytes / 1e6:.1f} MB stored once ({ratio:.0f}x the module); "
        f"tasks in bundle: {', '.join(sorted(manifest.tasks))}"
    )


export_app.command("executorch")(needs("export executorch", "export", "executorch")(export_executorch_cmd))


@export_app.command("peft")
@needs("export", "export")
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
    backend: Backend = "ort",
) -> None:
    """Train a task's module locally on this CPU (ONNX Runtime, torch-free; or --backend executorch) and report held-out accuracy."""
    from fedyolo.cli.train import train_command

    train_command(bundle, task, data, test_data, epochs, lr, batch_size, seed, save, backend=backend)


from fedyolo.cli.device import register as _register_device_commands  # noqa: E402
from fedyolo.cli.runs import register as _register_runs  # noqa: E402

_register_device_commands(app, export_app)
_register_runs(app)


def _verify(ca_cert: Path | None, insecure: bool) -> bool | Path:
    """httpx's `verify` from the TLS options: a CA file, off, or the system's CAs."""
    if insecure:
        return False
    return ca_cert if ca_cert is not None else True


@app.command("serve")
@needs("the server", "server")
def serve_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle folder: every task in it gets rounds")],
    host: Annotated[
        str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    rounds: Rounds = 20,
    min_clients: Annotated[int, typer.Option(min=1, help="updates that close a round")] = 3,
    strategy: Strategy = "fedavg",
    server_lr: ServerLr = None,
    server_momentum: ServerMomentum = 0.9,
    enroll_key: Annotated[
        str | None,
        typer.Option(envvar="FEDYOLO_ENROLL_KEY", help="key devices register with (default: generated)"),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="database + blobs (default: <bundle>.fedserver)")
    ] = None,
    deadline_s: Annotated[float, typer.Option(help="a round open this long closes with what it has")] = 600.0,
    local_epochs: LocalEpochs = 1,
    lr: ClientLr = 1e-3,
    lr_schedule: LrSchedule = "constant",
    batch_size: BatchSize = 8,
    proximal_mu: ProximalMu = 0.0,
    clip_norm: ClipNorm = 0.0,
    adaptive_clip: AdaptiveClip = 3.0,
    example_cap: ExampleCap = 4.0,
    aggregate: Aggregate = "mean",
    trim: Trim = 0.1,
    max_update_bytes: Annotated[int, typer.Option(help="upload cap; 0: the module size + header")] = 0,
    max_examples: Annotated[
        int, typer.Option(min=1, help="the most examples one update may claim")
    ] = 1_000_000,
    max_abs_weight: Annotated[
        float, typer.Option(help="refuse updates holding larger values (0: no check)")
    ] = 65504.0,
    max_clients: Annotated[
        int, typer.Option(min=1, help="devices the enrollment key registers at most")
    ] = 10_000,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (with --ssl-keyfile)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    workers: Annotated[int, typer.Option(min=1, help="server processes (each uses a core)")] = 1,
    max_header_bytes: Annotated[
        int, typer.Option(help="cap of a request's line + headers; over it: 431")
    ] = 32 * 1024,
    read_timeout_s: Annotated[
        float, typer.Option(help="a request must arrive whole this soon after its first byte; else 408")
    ] = 60.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="open connections per server process; beyond: 503 server_busy")
    ] = 1000,
    web_demo: Annotated[
        int, typer.Option(min=0, help="phones get one of N demo shards of each built-in task; 0 off")
    ] = 0,
) -> None:
    """Serve federated rounds for every task of a bundle (HTTP/JSON, SQLite + blobs, durable)."""
    from fedyolo.fedserver.serve import serve_command, state_dir_of

    plan = FederationPlan.from_options(locals())  # the plan's options, named after its fields
    if web_demo:
        from fedyolo.tasks.web_demo import write_demo_shards

        write_demo_shards(bundle, state_dir_of(bundle, state_dir), web_demo)
    serve_command(
        bundle,
        plan,
        host=host,
        port=port,
        min_clients=min_clients,
        enroll_key=enroll_key,
        state_dir=state_dir,
        deadline_s=deadline_s,
        max_update_bytes=max_update_bytes,
        max_examples=max_examples,
        max_abs_weight=max_abs_weight,
        max_clients=max_clients,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level=log_level,
        workers=workers,
        max_header_bytes=max_header_bytes,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
    )


@app.command("client")
def client_cmd(
    url: Annotated[str, typer.Argument(help="server URL, e.g. http://127.0.0.1:8080")],
    task: Annotated[str, typer.Option(help="task id to train")],
    data: Annotated[Path, typer.Option(help="this client's examples (JSONL/CSV; .npz for images)")],
    enroll_key: Annotated[
        str | None,
        typer.Option(envvar="FEDYOLO_ENROLL_KEY", help="the server's enrollment key (first run only)"),
    ] = None,
    name: Annotated[str, typer.Option(help="client name; one state dir per name")] = "default",
    state_dir: Annotated[
        Path | None, typer.Option(help="token + pending update (default: ~/.fedyolo/clients/<name>)")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="bundle cache shared by this device's clients")
    ] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="stop after this many accepted updates")] = None,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads; 0: one per core")] = 0,
    ca_cert: Annotated[Path | None, typer.Option(help="CA or self-signed certificate of the server")] = None,
    insecure: Annotated[bool, typer.Option(help="do not verify the server's TLS certificate")] = False,
    events: Annotated[
        Path | None,
        typer.Option(help="append progress here as JSON lines (stage, task, round, done, total, time, ...)"),
    ] = None,
    backend: Backend = "ort",
) -> None:
    """Join a federation: register once, fetch the bundle once, then train and upload round after round.

    With --events FILE, every stage (register, download, train, upload, round, wait, done, failed) is
    also appended to FILE as one JSON object a line, for a supervisor: the schema is in
    `fedyolo.runtime.events`.
    """
    from fedyolo.cli.client import client_command

    client_command(
        url,
        task,
        data,
        enroll_key=enroll_key,
        state_dir=state_dir,
        threads=threads,
        rounds=rounds,
        cache_dir=cache_dir,
        name=name,
        verify=_verify(ca_cert, insecure),
        events=events,
        backend=backend,
    )


@app.command("status")
def status_cmd(
    url: Annotated[str, typer.Argument(help="server URL")],
    ca_cert: Annotated[Path | None, typer.Option(help="CA or self-signed certificate of the server")] = None,
    insecure: Annotated[bool, typer.Option(help="do not verify the server's TLS certificate")] = False,
) -> None:
    """A server's tasks: round, clients, accuracy and bytes received."""
    from fedyolo.cli.client import status_command

    status_command(url, verify=_verify(ca_cert, insecure))


def main() -> None:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # torchao (pulled in by the executorch extra; peft imports it when present) warns at import that its
    # optional CUDA/Triton kernels do not load, and makes torch's pytree warn about its enums: neither
    # concerns a CPU user, and a mistake must stay one line (tests/test_cli.py)
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        try:
            app()
        except ModuleNotFoundError as e:
            # An optional part that a command imports late: name the extra that installs it.
            known = missing_extra(e)
            if known is None:
                raise
            raise known from e
    except FedyoloError as e:
        # One line, whatever the terminal width or the message: scripts and logs grep for it.
        message = " ".join(str(e).split())
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
