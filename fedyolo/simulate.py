"""`fedyolo simulate`: many federated clients in one process, with the server's and the client's own code.

No second implementation of the math: each simulated client trains with the real client's
`train_round` by the round's `RoundPlan`, its update goes through the wire format both ways, and the
round is folded by the server's own `RoundFold` under the same `FederationPlan`, in the server's order.
One `OrtTrainer` per task (over one `SharedBackbone`) serves every client in turn through
`set_module`: a client is its data and its random stream, not a model in memory.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedyolo.fedserver.fold import RoundFold
from fedyolo.fedserver.strategies import StrategyState
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import train_round
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.local import evaluate_arrays
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.trainer import ExampleArrays, Trainer
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module


@dataclass(frozen=True)
class Cohort:
    """Who trains each simulated round: a seeded sample of `fraction` of the clients."""

    fraction: float = 1.0
    seed: int = 0
    eval_every: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise FedyoloError(f"fraction {self.fraction} is not in (0, 1]; e.g. 0.1 samples 10% a round")
        if self.eval_every < 1:
            raise FedyoloError("eval_every must be at least 1")


@dataclass(frozen=True)
class RoundRecord:
    """One simulated round: who took part, what it cost on the wire, and the new global module's accuracy."""

    round: int
    clients: tuple[int, ...]
    examples: int
    train_loss: float
    accuracy: float | None  # held-out, of the module committed at the end of the round
    loss: float | None
    upload_bytes: int
    download_bytes: int
    seconds: float


def sample_clients(n_clients: int, fraction: float, round_id: int, seed: int) -> list[int]:
    """The clients of round `round_id`: max(1, round(fraction * n)) of them, drawn without replacement
    from a generator seeded by (seed, round), so a round's choice never depends on earlier rounds."""
    k = max(1, min(n_clients, round(fraction * n_clients)))
    rng = np.random.default_rng([seed, round_id])
    return sorted(int(c) for c in rng.choice(n_clients, size=k, replace=False))


def wire(weights: ModuleWeights, task: TaskSpec) -> tuple[ModuleWeights, int]:
    """Weights as the other side reads them (through safetensors and the wire dtype) and the bytes sent."""
    body = encode_module(weights, task)
    return decode_module(body, task), len(body)


def run_federation(
    trainer: Trainer,
    initial: ModuleWeights,
    clients: Sequence[ExampleArrays],
    plan: FederationPlan,
    cohort: Cohort,
    test: ExampleArrays | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_update: Callable[[int, int, ModuleWeights, int], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[ModuleWeights, list[RoundRecord]]:
    """Run `plan.rounds` rounds over `clients` (one array set each); returns the final global module.

    on_update(round, client, weights, examples): each update as the server receives it.
    """
    task = trainer.task
    global_weights, _ = wire(initial, task)
    state = StrategyState()
    records = []
    for r in range(1, plan.rounds + 1):
        start = time.perf_counter()
        chosen = sample_clients(len(clients), cohort.fraction, r, cohort.seed)
        fold = RoundFold(global_weights, plan, state)
        losses, up, down = [], 0, 0
        for c in chosen:
            received, n_down = wire(global_weights, task)  # the client downloads the global module
            rng = np.random.default_rng([cohort.seed, r, c])
            examples, metrics = train_round(
                trainer, received, clients[c], plan.for_round(r), rng, on_step=on_step
            )
            update, n_up = wire(trainer.get_module(), task)  # and uploads its trained one
            fold.add(update, examples)
            losses.append(metrics.get("train_loss", math.nan))
            up, down = up + n_up, down + n_down
            if on_update is not None:
                on_update(r, c, update, examples)
        new, state = fold.result()
        global_weights, _ = wire(new, task)  # the server commits it through the wire format too
        result = None
        if test is not None and (r % cohort.eval_every == 0 or r == plan.rounds):
            trainer.set_module(global_weights)
            result = evaluate_arrays(trainer, test)
        record = RoundRecord(
            round=r,
            clients=tuple(chosen),
            examples=int(fold.examples),
            train_loss=float(np.mean(losses)),
            accuracy=None if result is None else result.accuracy,
            loss=None if result is None else result.loss,
            upload_bytes=up,
            download_bytes=down,
            seconds=time.perf_counter() - start,
        )
        records.append(record)
        if on_round is not None:
            on_round(record)
    return global_weights, records


def with_programs(
    bundle: Bundle,
    labels: Mapping[str, Sequence[str]],
    backbone: str,
    module: str,
    max_length: int,
    seed: int,
    batch: int,
) -> Bundle:
    """The bundle with an ExecuTorch program for every task in `labels` (added where missing)."""
    from fedyolo.export.executorch_bundle import export_executorch
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.executorch_files import PROGRAM

    for task_id, names in labels.items():
        if PROGRAM not in bundle.task(task_id).files:
            export_executorch(bundle.root, task_id, names, backbone, module, max_length=max_length,
                              batch=batch, seed=seed, show_progress=False)  # fmt: skip
    return open_bundle(bundle.root, tasks=list(labels))


def simulate_command(
    tasks: Sequence[str],
    plan: FederationPlan,
    cohort: Cohort,
    clients: int,
    alpha: float,
    module: str,
    backbone: str,
    out: Path,
    max_length: int,
    train_per_task: int,
    test_per_task: int,
    backend: str = "ort",
) -> dict[str, Any]:
    """Export (or reuse) the bundle, then simulate each task's federation; print a table, write JSON."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from fedyolo.export.reuse import ensure_bundle
    from fedyolo.runtime.backends import check_backend, make_trainer
    from fedyolo.runtime.bundle import initial_module
    from fedyolo.runtime.ort_trainer import SharedBackbone
    from fedyolo.tasks.shares import encode_shares, share_task

    console = Console()
    seed = cohort.seed
    shares = [share_task(t, clients, alpha, seed, train_per_task, test_per_task) for t in tasks]
    labels = {s.task_id: s.labels for s in shares}
    bundle, exported = ensure_bundle(out / "bundle", labels, backbone, module, max_length, seed)
    console.print(
        f"{'exported' if exported else 'reusing'} bundle {out / 'bundle'}; {clients} clients, "
        f"{cohort.fraction:g} of them a round, alpha {alpha:g}, {plan.rounds} rounds x "
        f"{plan.local_epochs} local epochs"
    )
    if check_backend(backend) == "executorch":
        bundle = with_programs(bundle, labels, backbone, module, max_length, seed, plan.batch_size)
    shared = SharedBackbone(bundle) if backend == "ort" else None
    results: dict[str, Any] = {
        "plan": asdict(plan),
        "cohort": asdict(cohort),
        "alpha": alpha,
        "clients": clients,
        "tasks": {},
    }
    for share in shares:
        trainer = make_trainer(bundle, share.task_id, backend, lr=plan.lr, shared=shared)
        client_arrays, test = encode_shares(bundle, share)
        initial = initial_module(bundle, share.task_id)
        table = Table(title=f"{share.task_id}: {share.train_used} train examples among {clients} clients")
        for column in ("round", "clients", "examples", "train loss", "held-out acc", "s"):
            table.add_column(column, justify="right")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            bar = progress.add_task(f"{share.task_id} rounds", total=plan.rounds)

            def on_round(rec: RoundRecord, table: Table = table, bar: TaskID = bar) -> None:
                acc = "-" if rec.accuracy is None else f"{rec.accuracy:.1%}"
                table.add_row(
                    str(rec.round),
                    str(len(rec.clients)),
                    str(rec.examples),
                    f"{rec.train_loss:.3f}",
                    acc,
                    f"{rec.seconds:.1f}",
                )
                progress.advance(bar)

            _, records = run_federation(trainer, initial, client_arrays, plan, cohort, test, on_round)
        console.print(table)
        results["tasks"][share.task_id] = {
            "train_examples": share.train_used,
            "train_available": share.train_available,
            "test_examples": len(share.test),
            "rounds": [asdict(r) for r in records],
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulate.json").write_text(json.dumps(results, indent=1))
    console.print(f"results: {out / 'simulate.json'}")
    return results
