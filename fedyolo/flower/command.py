"""`fedyolo flower`: Flower app projects and Flower's simulation engine over fedyolo's apps.

Only typer here: Flower (and ONNX Runtime) are imported inside the commands, so `fedyolo --help` and
every other command never load them, and the base install (without the `flower` extra) still runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fedyolo.options import parse_pairs
from fedyolo.runtime.errors import FedyoloError

flower_app = typer.Typer(
    no_args_is_help=True, help="Run fedyolo's clients and aggregation as Flower apps (the `flower` extra)."
)

Settings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="any run config key=value (e.g. strategy=fedavgm, server-momentum=0.5, privacy=server); "
        "see fedyolo.flower.settings.FlowerRun",
    ),
]


def _flwr() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError as e:
        raise FedyoloError("Flower is not installed: pip install 'fedyolo[flower]'") from e


def _settings(pairs: list[str] | None, given: dict[str, Any]) -> Any:
    from fedyolo.flower.settings import FlowerRun

    values = {**given, **parse_pairs(pairs, "--set", "strategy=fedavgm")}
    return FlowerRun.from_run_config(values)


@flower_app.command("new")
def new_cmd(
    folder: Annotated[Path, typer.Argument(help="the Flower app project to write")],
    bundle: Annotated[Path, typer.Option(help="the bundle every node holds")],
    task: Annotated[str, typer.Option(help="the task to federate")] = "topics",
    rounds: Annotated[int, typer.Option(min=1)] = 20,
    fraction: Annotated[float, typer.Option(help="share of the clients trained each round")] = 1.0,
    out: Annotated[Path, typer.Option(help="where the ServerApp writes modules and history")] = Path(
        "flower_out"
    ),
    settings: Settings = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing pyproject.toml")] = False,
) -> None:
    """Write a Flower app project: a pyproject.toml whose tool.flwr sections run fedyolo's apps."""
    from fedyolo.flower.project import new_project
    from fedyolo.runtime.bundle import open_bundle

    open_bundle(bundle).task(task)  # a missing bundle or task is an error now, not on every node later
    given = {"bundle": str(bundle.resolve()), "task": task, "rounds": rounds, "fraction": fraction}
    run = _settings(settings, given | {"out": str(out.resolve())})
    path = new_project(folder, run, force=force)
    typer.echo(
        f"wrote {path}\n"
        f"simulate:  flwr run {folder} <connection>   (a [superlink.<connection>] with options.num-supernodes "
        "in $FLWR_HOME/config.toml)\n"
        f"deploy:    flower-superlink, then on each device flower-supernode --superlink HOST:PORT "
        "--node-config 'data=\"mine.jsonl\"', then flwr run "
        f"{folder} <connection>"
    )


@flower_app.command("simulate")
def simulate_cmd(
    clients: Annotated[int, typer.Option(min=1, help="virtual SuperNodes, one client each")] = 100,
    fraction: Annotated[float, typer.Option(help="share of the clients trained each round")] = 0.1,
    rounds: Annotated[int, typer.Option(min=1)] = 20,
    task: Annotated[str, typer.Option(help="a built-in task")] = "topics",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration: 0.1 skewed, 10 near IID")] = 1.0,
    backbone: Annotated[str, typer.Option(help="minilm, tiny-bert, or a local HF dir")] = "minilm",
    module: Annotated[str, typer.Option(help="lora, adapter, prompt, head or full")] = "lora",
    out: Annotated[Path, typer.Option(help="bundle, modules, history.json")] = Path("flower_out"),
    max_length: Annotated[int, typer.Option(min=2)] = 24,
    train_per_task: Annotated[int, typer.Option(help="cut the train split to this many; 0: all")] = 0,
    test_per_task: Annotated[int, typer.Option(help="cut the test split to this many; 0: all")] = 600,
    local_epochs: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(help="clients' learning rate")] = 2e-3,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    eval_every: Annotated[int, typer.Option(min=1)] = 5,
    actors: Annotated[int, typer.Option(help="Ray workers running ClientApps; 0: one per core")] = 0,
    settings: Settings = None,
) -> None:
    """Flower's simulation engine over fedyolo's apps: `fedyolo simulate`'s federation, run by Flower."""
    _flwr()
    from rich.console import Console
    from rich.table import Table

    from fedyolo.export.reuse import ensure_bundle
    from fedyolo.flower.simulation import simulate_flower
    from fedyolo.tasks.shares import share_task

    console = Console()
    share = share_task(task, clients, alpha, seed, train_per_task, test_per_task)
    labels = {share.task_id: share.labels}
    bundle, exported = ensure_bundle(out / "bundle", labels, backbone, module, max_length, seed)
    given = {
        "bundle": str(bundle.root.resolve()),
        "task": share.task_id,
        "rounds": rounds,
        "fraction": fraction,
        "alpha": alpha,
        "train-per-task": train_per_task,
        "test-per-task": test_per_task,
        "local-epochs": local_epochs,
        "lr": lr,
        "batch-size": batch_size,
        "seed": seed,
        "eval-every": eval_every,
        "out": str(out.resolve()),
        "threads": 1,
    }
    run = _settings(settings, given)
    console.print(
        f"{'exported' if exported else 'reusing'} bundle {out / 'bundle'}; {clients} virtual SuperNodes, "
        f"{fraction:g} of them a round, alpha {alpha:g}, {rounds} rounds under Flower's simulation engine"
    )
    start = time.perf_counter()
    history = simulate_flower(run, clients, actors=actors)
    seconds = time.perf_counter() - start
    table = Table(title=f"{share.task_id}: Flower simulation, {clients} clients")
    for column in ("round", "clients", "examples", "train loss", "held-out acc", "up", "down"):
        table.add_column(column, justify="right")
    for r in history["rounds"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        table.add_row(
            str(r["round"]),
            str(len(r["clients"])),
            f"{r['examples']:.0f}",
            f"{r['train_loss']:.3f}",
            acc,
            f"{r['upload_bytes'] / 1e3:.0f} KB",
            f"{r['download_bytes'] / 1e3:.0f} KB",
        )
    console.print(table)
    console.print(f"wall time {seconds:.0f} s; modules and history in {out / share.task_id}")
