"""The PC-side runs: `fedyolo demo` (server and clients as processes) and `fedyolo simulate` (many
clients in one process); both need the export and data extras, imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedyolo.cli.extras import needs
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
from fedyolo.runtime.plan import FederationPlan


def _task_list(tasks: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in tasks.split(",") if t.strip())


@needs("the demo", "export", "server", "data")
def demo_cmd(
    clients: Annotated[int, typer.Option(min=1, help="client processes per task")] = 4,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration: 0.1 skewed, 10 near IID")] = 1.0,
    rounds: Annotated[int, typer.Option(min=1, help="rounds per task")] = 4,
    local_epochs: Annotated[int, typer.Option(min=1, help="epochs each client trains a round")] = 1,
    module: Annotated[str, typer.Option(help="lora, adapter, prompt, head or full")] = "lora",
    tasks: Annotated[
        str, typer.Option(help="comma-separated: built-in tasks or JSONL/CSV files")
    ] = "topics,language",
    backbone: Annotated[str, typer.Option(help="minilm, tiny-bert, or a local HF dir")] = "minilm",
    out: Annotated[Path, typer.Option(help="bundle, logs, results.json, demo.png")] = Path("demo_out"),
    chaos: Annotated[bool, typer.Option(help="kill a client mid-round and send a NaN update")] = False,
    seed: Annotated[int, typer.Option(help="partition, subsample and module seed")] = 0,
    port: Annotated[int, typer.Option(help="server port on 127.0.0.1; 0 picks a free one")] = 0,
    lr: Annotated[float, typer.Option(help="learning rate (AdamW), constant")] = 2e-3,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_length: Annotated[int, typer.Option(min=2, help="tokens per example")] = 24,
    train_per_task: Annotated[int, typer.Option(help="cut each train split to this many; 0: all")] = 1500,
    test_per_task: Annotated[int, typer.Option(help="cut each test split to this many; 0: all")] = 600,
    round_deadline: Annotated[
        float, typer.Option(help="seconds before a round closes without everyone")
    ] = 300.0,
    timeout: Annotated[float, typer.Option(help="stop the whole demo after this many seconds")] = 1500.0,
) -> None:
    """A real federated run of each task over one frozen backbone: server and clients as processes."""
    from fedyolo.demo.command import demo_command
    from fedyolo.demo.config import DemoConfig

    config = DemoConfig(
        clients=clients,
        alpha=alpha,
        rounds=rounds,
        local_epochs=local_epochs,
        module=module,
        tasks=_task_list(tasks),
        backbone=backbone,
        out=out,
        chaos=chaos,
        seed=seed,
        port=port,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        train_per_task=train_per_task,
        test_per_task=test_per_task,
        round_deadline_s=round_deadline,
        timeout_s=timeout,
    )
    demo_command(config)


@needs("simulate", "export", "data")
def simulate_cmd(
    clients: Annotated[int, typer.Option(min=1, help="simulated clients")] = 100,
    fraction: Annotated[float, typer.Option(help="share of the clients sampled each round")] = 0.1,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration: 0.1 skewed, 10 near IID")] = 1.0,
    rounds: Rounds = 50,
    local_epochs: LocalEpochs = 1,
    tasks: Annotated[str, typer.Option(help="comma-separated: built-in tasks or JSONL/CSV files")] = "topics",
    module: Annotated[str, typer.Option(help="lora, adapter, prompt, head or full")] = "lora",
    backbone: Annotated[str, typer.Option(help="minilm, tiny-bert, or a local HF dir")] = "minilm",
    out: Annotated[Path, typer.Option(help="bundle and simulate.json")] = Path("simulate_out"),
    lr: ClientLr = 2e-3,
    batch_size: BatchSize = 16,
    max_length: Annotated[int, typer.Option(min=2)] = 24,
    train_per_task: Annotated[int, typer.Option(help="cut each train split to this many; 0: all")] = 0,
    test_per_task: Annotated[int, typer.Option(help="cut each test split to this many; 0: all")] = 600,
    lr_schedule: LrSchedule = "constant",
    proximal_mu: ProximalMu = 0.0,
    clip_norm: ClipNorm = 0.0,
    adaptive_clip: AdaptiveClip = 3.0,
    example_cap: ExampleCap = 4.0,
    aggregate: Aggregate = "mean",
    trim: Trim = 0.1,
    strategy: Strategy = "fedavg",
    server_lr: ServerLr = None,
    server_momentum: ServerMomentum = 0.9,
    seed: Annotated[int, typer.Option()] = 0,
    eval_every: Annotated[int, typer.Option(min=1, help="evaluate the global module every n rounds")] = 5,
    backend: Backend = "ort",
) -> None:
    """Many clients in one process, with the server's fold and the client's training code."""
    from fedyolo.simulate import Cohort, simulate_command

    plan = FederationPlan.from_options(locals())  # the plan's options, named after its fields
    simulate_command(
        _task_list(tasks),
        plan,
        Cohort(fraction=fraction, seed=seed, eval_every=eval_every),
        clients=clients,
        alpha=alpha,
        module=module,
        backbone=backbone,
        out=out,
        max_length=max_length,
        train_per_task=train_per_task,
        test_per_task=test_per_task,
        backend=backend,
    )


def register(app: typer.Typer) -> None:
    """Mount `demo` and `simulate` on the `fedyolo` app."""
    app.command("demo")(demo_cmd)
    app.command("simulate")(simulate_cmd)
