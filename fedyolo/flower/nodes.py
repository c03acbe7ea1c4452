"""What one Flower node holds: its trainer (one per process, over one memory-mapped backbone), its data,
and the two things it does with a module, train a round and evaluate.

A node's data: its share of the built-in task when Flower gives it a `partition-id` (simulation, tests:
the same Dirichlet split as `fedyolo simulate`), or its own JSONL/CSV file as node config `data`. A client
is its data and its random stream, not a model in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context

from fedyolo.flower.records import config_plan, number
from fedyolo.flower.settings import FlowerRun
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.local import encode_examples, evaluate_arrays, train_round
from fedyolo.runtime.trainer import EvalResult, ExampleArrays
from fedyolo.runtime.wire import ModuleWeights

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


def node_of(context: Context, defaults: FlowerRun | None) -> Node:
    """The node this message is for: its settings (run config over `defaults`), trainer and data."""
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


def held_out_of(node: Node, context: Context) -> ExampleArrays:
    """The task's held-out split, as `fedyolo simulate` cuts it for this run's clients."""
    bundle_dir = str(node.trainer.bundle.root.resolve())
    clients = int(context.node_config.get(NUM_PARTITIONS, 1))
    return _held_out(node.settings, bundle_dir, clients)


def train_node(node: Node, config: Mapping[str, Any], weights: ModuleWeights) -> tuple[int, dict[str, float]]:
    """Train the round's module by the round's plan in `config`; the trained module stays in the trainer.

    The client's stream is seeded as `fedyolo simulate` seeds it: the same shuffles for the same client
    and round. Returns (examples, metrics) as `train_round` does.
    """
    task = node.trainer.task
    if config.get("task", task.task_id) != task.task_id:
        raise FedyoloError(f"the server runs task {config['task']!r}; this node trains {task.task_id!r}")
    plan = config_plan(config)
    seed = int(number(config.get("seed", node.settings.seed), "seed"))
    rng = np.random.default_rng([seed, plan.round, max(node.partition, 0)])
    return train_round(node.trainer, weights, node.data, plan, rng)


def evaluate_node(node: Node, context: Context, split: str, weights: ModuleWeights) -> EvalResult:
    """Loss and accuracy of `weights` on the held-out split ("test") or on the node's own data."""
    data = held_out_of(node, context) if split == "test" else node.data
    node.trainer.set_module(weights)
    return evaluate_arrays(node.trainer, data)
