"""Demo shards for phones: `fedyolo serve --web-demo N` cuts each built-in task of the bundle into N
client shards (train + held-out items) that the server hands to the page, one per registered phone."""

from __future__ import annotations

import json
from pathlib import Path

from fedyolo.runtime.durable import write_atomic
from fedyolo.runtime.manifest import read_manifest
from fedyolo.tasks.partition import dirichlet_partition
from fedyolo.tasks.shares import stratified_sample
from fedyolo.tasks.task import BUILTIN_TASKS, load_task

DEMO_DIR = "web_demo"


def write_demo_shards(
    bundle_dir: Path,
    state_dir: Path,
    shards: int,
    per_shard: int = 60,
    held_out: int = 15,
    alpha: float = 1.0,
) -> list[str]:
    """Write `<state_dir>/web_demo/<task>.json` for each built-in task the bundle serves; their ids.

    Train items: a Dirichlet(alpha) partition of the task's train split (as `simulate` cuts clients),
    `per_shard` of each share kept; held-out items: a stratified sample of the test split per shard.
    """
    manifest = read_manifest(bundle_dir)
    written = []
    for task_id, spec in manifest.tasks.items():
        if task_id not in BUILTIN_TASKS:
            continue
        data = load_task(task_id)
        if tuple(data.labels) != tuple(spec.labels):
            continue  # a task of that name with other labels: not the built-in one
        parts = dirichlet_partition(data.train, data.labels, shards, alpha, seed=0)
        body = {
            "shards": [
                {
                    "train": [[e.label, e.text] for e in stratified_sample(part, per_shard, seed=i)],
                    "held_out": [[e.label, e.text] for e in stratified_sample(data.test, held_out, seed=i)],
                }
                for i, part in enumerate(parts)
            ]
        }
        (state_dir / DEMO_DIR).mkdir(parents=True, exist_ok=True)
        write_atomic(state_dir / DEMO_DIR / f"{task_id}.json", json.dumps(body).encode())
        written.append(task_id)
    return written
