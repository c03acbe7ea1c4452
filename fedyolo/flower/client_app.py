"""The Flower ClientApp: the runtime's trainer and `train_round` behind Flower's Message API.

    @app.query()     "which client are you": the node's partition id and task (the ServerApp maps
                     Flower's node ids to fedyolo's client numbers with it, to draw the same cohort)
    @app.train()     the round's module (ArrayRecord) and plan (ConfigRecord) in, `train_round`, the
                     trained module and its example count out
    @app.evaluate()  the module on the task's held-out split ("test") or on the node's own data

A node's data: its share of the built-in task when Flower gives it a `partition-id` (simulation, tests:
the same Dirichlet split as `fedyolo simulate`), or its own JSONL/CSV file as node config `data`. A node
keeps one trainer per process over one `SharedBackbone`, as `fedyolo simulate` does: a client is its data
and its random stream, not a model in memory. Training is the real client's `train_round`, with the
client's stream seeded by (seed, round, client) like `fedyolo simulate`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedyolo.flower.records import (
    CONFIG_KEY,
    EXAMPLES,
    METRICS_KEY,
    MODULE_KEY,
    config_plan,
    module_record,
    number,
    record_module,
)
from fedyolo.flower.settings import FlowerRun
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.local import encode_examples, evaluate_arrays, train_round
from fedyolo.runtime.trainer import ExampleArrays

log = logging.getLogger(__name__)

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NO_PARTITION = -1  # a node with its own data


@dataclass
class Node:
    """What one client process holds for a node: the trainer (shared by its nodes) and the node's data."""

    trainer: Any  # OrtTrainer: ONNX Runtime is imported when the first message arrives, not at import
    data: ExampleArrays
    partition: int
    settings: FlowerRun


@lru_cache(maxsize=4)
def _trainer(bundle_dir: str, task_id: str, threads: int) -> Any:
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone

    bundle = open_bundle(bundle_dir)
    return OrtTrainer(bundle, task_id, backbone=SharedBackbone(bundle), threads=threads)


@lru_cache(maxsize=4)
def _task_plan(task: str, clients: int, alpha: float, seed: int, train_cut: int, test_cut: int) -> Any:
    from fedyolo.tasks.shares import share_task

    return share_task(task, clients, alpha, seed, train_cut, test_cut)


@lru_cache(maxsize=256)
def _share(settings: FlowerRun, bundle_dir: str, clients: int, partition: int) -> ExampleArrays:
    trainer = _trainer(bundle_dir, settings.task, settings.threads)
    plan = _task_plan(
        settings.task, clients, settings.alpha, settings.seed, settings.train_per_task, settings.test_per_task
    )
    source = f"client {partition} of {settings.task}"
    return encode_examples(trainer.bundle, trainer.task, list(plan.shares[partition]), source)


@lru_cache(maxsize=4)
def _held_out(settings: FlowerRun, bundle_dir: str, clients: int) -> ExampleArrays:
    trainer = _trainer(bundle_dir, settings.task, settings.threads)
    plan = _task_plan(
        settings.task, clients, settings.alpha, settings.seed, settings.train_per_task, settings.test_per_task
    )
    return encode_examples(trainer.bundle, trainer.task, list(plan.test), f"{settings.task} test split")


@lru_cache(maxsize=16)
def _own_data(bundle_dir: str, task_id: str, threads: int, path: str) -> ExampleArrays:
    from fedyolo.runtime.data import read_examples

    trainer = _trainer(bundle_dir, task_id, threads)
    return encode_examples(trainer.bundle, trainer.task, read_examples(path), path)


def _node(context: Context, defaults: FlowerRun | None) -> Node:
    settings = FlowerRun.from_run_config(context.run_config, defaults)
    config = context.node_config
    bundle_dir = str(Path(str(config.get("bundle", settings.bundle))).resolve())
    trainer = _trainer(bundle_dir, settings.task, settings.threads)
    if "data" in config:
        data = _own_data(bundle_dir, settings.task, settings.threads, str(config["data"]))
        return Node(trainer, data, NO_PARTITION, settings)
    if PARTITION_ID not in config:
        raise FedyoloError(
            f"node {context.node_id} has no data: start its SuperNode with --node-config 'data=\"FILE.jsonl\"' "
            "(its own examples) or 'partition-id=I num-partitions=N' (a share of the built-in task)"
        )
    partition, clients = int(config[PARTITION_ID]), int(config.get(NUM_PARTITIONS, 1))
    return Node(trainer, _share(settings, bundle_dir, clients, partition), partition, settings)


def _held_out_of(node: Node, context: Context) -> ExampleArrays:
    bundle_dir = str(node.trainer.bundle.root.resolve())
    clients = int(context.node_config.get(NUM_PARTITIONS, 1))
    return _held_out(node.settings, bundle_dir, clients)


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` on the training messages of a run under client-side DP (those whose
    config carries the wrapper's clipping norm); every other message passes untouched."""
    config = msg.content.config_records.get(CONFIG_KEY)
    if msg.metadata.message_type == MessageType.TRAIN and config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def build_client_app(defaults: FlowerRun | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp whose settings are `defaults` overridden by the run config (what `flwr run` sends).

    mods: Flower mods around every message; `privacy_mod` (client-side DP clipping) is always the last.
    """
    app = ClientApp(mods=[*(mods or []), privacy_mod])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Name this node: its partition (or -1 with its own data), task and example count."""
        node = _node(context, defaults)
        reply = ConfigRecord(
            {
                PARTITION_ID: node.partition,
                "task": node.trainer.task.task_id,
                EXAMPLES: len(node.data["labels"]),
            }
        )
        return Message(RecordDict({CONFIG_KEY: reply}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the round's module by the round's plan; reply with the trained module and examples."""
        node = _node(context, defaults)
        task = node.trainer.task
        config = msg.content.config_records[CONFIG_KEY]
        if config.get("task", task.task_id) != task.task_id:
            raise FedyoloError(f"the server runs task {config['task']!r}; this node trains {task.task_id!r}")
        plan = config_plan(config)
        weights = record_module(msg.content.array_records[MODULE_KEY], task)
        seed = int(number(config.get("seed", node.settings.seed), "seed"))
        # The client's stream, as `fedyolo simulate` seeds it: the same shuffles for the same client and round.
        rng = np.random.default_rng([seed, plan.round, max(node.partition, 0)])
        examples, metrics = train_round(node.trainer, weights, node.data, plan, rng)
        out = MetricRecord({**metrics, EXAMPLES: examples, PARTITION_ID: node.partition})
        content = RecordDict({MODULE_KEY: module_record(node.trainer.get_module(), task), METRICS_KEY: out})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Loss and accuracy of the sent module on the held-out split ("test") or the node's own data."""
        node = _node(context, defaults)
        config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
        data = _held_out_of(node, context) if config.get("split", "local") == "test" else node.data
        node.trainer.set_module(record_module(msg.content.array_records[MODULE_KEY], node.trainer.task))
        result = evaluate_arrays(node.trainer, data)
        metrics = MetricRecord({"accuracy": result.accuracy, "loss": result.loss, EXAMPLES: result.examples})
        return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)

    return app


# What a Flower app project names as its clientapp (`fedyolo flower new` writes it into pyproject.toml).
app = build_client_app()
