"""The ServerApp's strategy: Flower owns the round loop, the project's `RoundFold` folds each round.

`FoldStrategy` fills Flower's hooks and does no math of its own:

    configure_train     the cohort `sample_clients` draws (fedyolo simulate's draw, by client number),
                        each sent the global module (ArrayRecord) and `plan.for_round(r)` (ConfigRecord)
    aggregate_train     replies in client order through `RoundFold` (clipping, the bounds, FedAvg /
                        FedAvgM / FedAdam), the `StrategyState` carried to the next round
    configure_evaluate  the committed module written in the wire format (safetensors), then sent for
                        held-out evaluation
    aggregate_evaluate  the accuracy into the history

Flower's differential-privacy wrappers wrap it like any strategy: they see the module as Flower's
"arrays" record, and the module written each round is the one the wrapper committed (noise included).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedyolo.fedserver.fold import RoundFold, is_finite
from fedyolo.fedserver.store import encode_state
from fedyolo.fedserver.strategies import StrategyState
from fedyolo.flower.nodes import NO_PARTITION, PARTITION_ID
from fedyolo.flower.records import (
    CONFIG_KEY,
    EXAMPLES,
    METRICS_KEY,
    MODULE_KEY,
    module_record,
    number,
    plan_config,
    record_module,
    wire_bytes,
)
from fedyolo.runtime.durable import write_atomic
from fedyolo.runtime.errors import FedyoloError, ModuleWeightsError
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module
from fedyolo.simulate import sample_clients

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
MODULE_FILE = "module.safetensors"
STATE_FILE = "state.safetensors"


@dataclass
class RoundLog:
    """One round as the ServerApp saw it: who trained, what travelled, the committed module's accuracy."""

    round: int
    clients: list[int]
    examples: float = 0.0
    train_loss: float | None = None
    accuracy: float | None = None
    loss: float | None = None
    upload_bytes: int = 0
    download_bytes: int = 0
    set_aside: list[str] = field(default_factory=list)
    seconds: float = 0.0


class FoldStrategy(Strategy):
    """A Flower strategy for one task whose aggregation is the server's `RoundFold`."""

    def __init__(
        self,
        task: TaskSpec,
        plan: FederationPlan,
        fraction: float = 1.0,
        seed: int = 0,
        out: Path | None = None,
        eval_every: int = 1,
        eval_split: str = "test",
        state: StrategyState | None = None,
        min_nodes: int = 1,
    ) -> None:
        self.task = task
        self.plan = plan
        self.fraction = fraction
        self.seed = seed
        self.out = out
        self.eval_every = eval_every
        self.eval_split = eval_split
        self.state = state if state is not None else StrategyState()
        self.min_nodes = min_nodes
        self.clients: dict[int, int] = {}  # Flower node id -> fedyolo client number
        self.history: list[RoundLog] = []
        self._global: ModuleWeights | None = None
        self.started = 0.0

    def summary(self) -> None:
        log.info("fedyolo fold over task %r: %s", self.task.task_id, self.plan)

    def discover(self, grid: Grid, timeout: float = 600.0) -> dict[int, int]:
        """Ask every connected node which client it is (its partition; nodes with their own data are
        numbered after the partitions, in node-id order). Waits, bounded, for `min_nodes` nodes."""
        deadline = time.monotonic() + timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.min_nodes:
            if time.monotonic() > deadline:
                raise FedyoloError(f"{len(nodes)} of {self.min_nodes} nodes connected within {timeout:.0f} s")
            time.sleep(1.0)
        asks = [
            Message(RecordDict({CONFIG_KEY: ConfigRecord({"task": self.task.task_id})}), n, MessageType.QUERY)
            for n in nodes
        ]
        partitions: dict[int, int] = {}
        for reply in grid.send_and_receive(asks, timeout=timeout):
            if reply.has_error():
                log.warning("node %s did not answer: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            answer = reply.content.config_records[CONFIG_KEY]
            if answer.get("task") != self.task.task_id:
                log.warning(
                    "node %s trains %r, not %r",
                    reply.metadata.src_node_id,
                    answer.get("task"),
                    self.task.task_id,
                )
                continue
            partitions[reply.metadata.src_node_id] = int(number(answer.get(PARTITION_ID), "partition id"))
        numbered = sorted(p for p in partitions.values() if p != NO_PARTITION)
        if len(set(numbered)) != len(numbered):
            raise FedyoloError(f"two nodes claim the same partition id: {numbered}")
        extra = [n for n in sorted(partitions) if partitions[n] == NO_PARTITION]
        base = (max(numbered) + 1) if numbered else 0
        self.clients = {n: p for n, p in partitions.items() if p != NO_PARTITION}
        self.clients |= {n: base + i for i, n in enumerate(extra)}
        if not self.clients:
            raise FedyoloError(f"no node of {len(nodes)} answered for task {self.task.task_id!r}")
        return self.clients

    def cohort(self, round_id: int) -> list[tuple[int, int]]:
        """(client, node) pairs of the round, in client order: `fedyolo simulate`'s draw."""
        by_client = sorted((c, n) for n, c in self.clients.items())
        chosen = sample_clients(len(by_client), self.fraction, round_id, self.seed)
        return [by_client[i] for i in chosen]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.started = time.perf_counter()
        self._global = record_module(arrays, self.task)
        cohort = self.cohort(server_round)
        content = RecordDict(
            {
                MODULE_KEY: arrays,
                CONFIG_KEY: plan_config(
                    self.plan.for_round(server_round), self.task.task_id, self.seed, **config
                ),
            }
        )
        self.history.append(
            RoundLog(server_round, [c for c, _ in cohort], download_bytes=wire_bytes(content) * len(cohort))
        )
        return [Message(content, node, MessageType.TRAIN, group_id=str(server_round)) for _, node in cohort]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train")
        record = self.history[-1]
        received: list[tuple[int, ModuleWeights, float, float]] = []  # (client, update, examples, loss)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                record.set_aside.append(f"node {node}: {reply.error.reason}")
                continue
            record.upload_bytes += wire_bytes(reply.content)
            try:
                metrics = reply.content.metric_records[METRICS_KEY]
                update = record_module(reply.content.array_records[MODULE_KEY], self.task)
                examples = number(metrics.get(EXAMPLES), EXAMPLES)
                loss = number(metrics.get("train_loss", math.nan), "train_loss")
            except (KeyError, ModuleWeightsError, TypeError, ValueError) as e:
                record.set_aside.append(f"node {node}: {e}")
                continue
            received.append((self.clients.get(node, -1), update, examples, loss))
        received.sort(key=lambda r: r[0])  # the order `fedyolo simulate` folds in: by client number
        fold = RoundFold(self._global, self.plan, self.state)
        for client, update, examples, _ in received:
            try:
                fold.add(update, examples)
            except ValueError as e:
                record.set_aside.append(f"client {client}: {e}")
        if fold.count == 0:
            log.warning("round %d: no update could be folded; the module stays", server_round)
            return None, None
        new, state = fold.result()
        if not is_finite(new, state):
            record.set_aside.append("the fold's result is not finite; the module stays")
            return None, None
        self.state = state
        # Committed through the wire format, as the server and `fedyolo simulate` commit it.
        new = decode_module(encode_module(new, self.task), self.task)
        record.examples = fold.examples
        record.train_loss = float(np.nanmean([r[3] for r in received]))
        metrics = MetricRecord(
            {"train_loss": record.train_loss, EXAMPLES: record.examples, "updates": fold.count}
        )
        return module_record(new, self.task), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # `arrays` is the module Flower committed this round (after any DP wrapper's noise): write it.
        self.write(server_round, record_module(arrays, self.task))
        if not (server_round % self.eval_every == 0 or server_round == self.plan.rounds):
            return []
        evaluators = self.cohort(server_round)[:1] if self.eval_split == "test" else self.cohort(server_round)
        content = RecordDict(
            {MODULE_KEY: arrays, CONFIG_KEY: ConfigRecord({**config, "split": self.eval_split})}
        )
        return [
            Message(content, node, MessageType.EVALUATE, group_id=str(server_round)) for _, node in evaluators
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        total, correct, loss = 0.0, 0.0, 0.0
        for reply in replies:
            if reply.has_error():
                log.warning(
                    "evaluation failed on node %s: %s", reply.metadata.src_node_id, reply.error.reason
                )
                continue
            try:
                m = reply.content.metric_records[METRICS_KEY]
                n = number(m.get(EXAMPLES), EXAMPLES)
                right, lost = n * number(m.get("accuracy"), "accuracy"), n * number(m.get("loss"), "loss")
            except (KeyError, ValueError) as e:
                log.warning("node %s sent unreadable metrics: %s", reply.metadata.src_node_id, e)
                continue
            total, correct, loss = total + n, correct + right, loss + lost
        if total == 0:
            return None
        self.record_evaluation(server_round, correct / total, loss / total)
        return MetricRecord({"accuracy": correct / total, "loss": loss / total, EXAMPLES: total})

    def record_evaluation(self, round_id: int, accuracy: float, loss: float) -> None:
        """The committed module's held-out accuracy and loss, into the round's log and history.json."""
        record = next((r for r in reversed(self.history) if r.round == round_id), None)
        if record is not None:
            record.accuracy, record.loss = accuracy, loss
            self._write_history()

    def write(self, round_id: int, weights: ModuleWeights) -> None:
        """Round `round_id`'s module (and the latest as module.safetensors), the state, the history; the
        round's time ends here."""
        if self.history:
            self.history[-1].seconds = time.perf_counter() - self.started
        if self.out is None:
            return
        folder = self.out / self.task.task_id
        folder.mkdir(parents=True, exist_ok=True)
        body = encode_module(weights, self.task)
        write_atomic(folder / f"round-{round_id:04d}.safetensors", body)
        write_atomic(folder / MODULE_FILE, body)
        write_atomic(folder / STATE_FILE, encode_state(self.state))
        self._write_history()

    def _write_history(self) -> None:
        if self.out is None:
            return
        folder = self.out / self.task.task_id
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / HISTORY_FILE, json.dumps(self.report(), indent=1).encode())

    def report(self) -> dict[str, Any]:
        return {
            "task": self.task.task_id,
            "plan": asdict(self.plan),
            "fraction": self.fraction,
            "seed": self.seed,
            "clients": len(self.clients),
            "rounds": [asdict(r) for r in self.history],
        }
