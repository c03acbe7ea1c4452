"""What a demo or a simulation runs on: the tasks' data (subsampled, partitioned among clients) and the
bundle (exported once, reused while its recipe is unchanged).

The budget is the point: the demo must finish in minutes on two CPU cores, so each task's train split
is cut to `train_per_task` examples and its test split to `test_per_task`, both stratified by label
and seeded. The cut is printed with the results, never hidden.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.data import Example
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.manifest import MANIFEST_NAME, MODULE_WEIGHTS, check_task_id
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.runtime.wire import ModuleWeights, decode_module
from fedyolo.tasks import dirichlet_partition, write_examples
from fedyolo.tasks.command import resolve_task

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class TaskPlan:
    """One task's data as the run uses it: a share per client and the held-out examples."""

    task_id: str
    labels: tuple[str, ...]
    shares: tuple[tuple[Example, ...], ...]
    test: tuple[Example, ...]
    train_available: int  # the task's whole train split, before the cut
    test_available: int

    @property
    def train_used(self) -> int:
        return sum(len(s) for s in self.shares)

    def union(self) -> list[Example]:
        """Every client's examples together: what centralised training would see."""
        return [e for share in self.shares for e in share]


def stratified_sample(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """`n` examples keeping each label's share (largest remainder), in input order; all when fewer."""
    if n >= len(examples):
        return list(examples)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.label].append(i)
    labels = sorted(by_label)
    exact = np.array([n * len(by_label[k]) / len(examples) for k in labels])
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label, count in zip(labels, counts, strict=True):
        rows = by_label[label]
        keep.extend(int(i) for i in rng.choice(rows, size=count, replace=False))
    return [examples[i] for i in sorted(keep)]


def plan_task(
    name: str, clients: int, alpha: float, seed: int, train_per_task: int, test_per_task: int
) -> TaskPlan:
    """A built-in task or a JSONL/CSV file, cut to budget, its train part shared among `clients`."""
    data = resolve_task(name)
    task_id = check_task_id(data.name)
    train = stratified_sample(data.train, train_per_task, seed) if train_per_task > 0 else data.train
    test = stratified_sample(data.test, test_per_task, seed) if test_per_task > 0 else data.test
    shares = dirichlet_partition(train, data.labels, clients, alpha, seed)
    return TaskPlan(
        task_id=task_id,
        labels=data.labels,
        shares=tuple(tuple(s) for s in shares),
        test=tuple(test),
        train_available=len(data.train),
        test_available=len(data.test),
    )


def client_data_path(data_dir: Path, task_id: str, client: int) -> Path:
    return data_dir / task_id / f"client-{client}.jsonl"


def test_data_path(data_dir: Path, task_id: str) -> Path:
    return data_dir / task_id / "test.jsonl"


def write_plan(plan: TaskPlan, data_dir: Path) -> None:
    """Each client's share and the test split as JSONL: what the client processes read."""
    for i, share in enumerate(plan.shares):
        write_examples(share, client_data_path(data_dir, plan.task_id, i))
    write_examples(plan.test, test_data_path(data_dir, plan.task_id))


@dataclass(frozen=True)
class BundleRecipe:
    """Everything the exported bundle depends on; an existing bundle with the same recipe is reused."""

    backbone: str
    module: str
    max_length: int
    seed: int
    tasks: dict[str, list[str]]  # task id -> labels


def ensure_bundle(
    out: Path,
    plans: Sequence[TaskPlan],
    backbone: str,
    module: str,
    max_length: int,
    seed: int,
    on_export: Callable[[int, str], None] | None = None,
) -> tuple[Bundle, bool]:
    """The bundle at `out` for these tasks: exported (backbone once, one module per task) unless a bundle
    made from the same recipe is already there. Returns the opened bundle and whether it was exported."""
    recipe = BundleRecipe(backbone, module, max_length, seed, {p.task_id: list(p.labels) for p in plans})
    recipe_path = out.parent / f"{out.name}.{RECIPE_FILE}"
    if (out / MANIFEST_NAME).is_file() and recipe_path.is_file():
        try:
            same = json.loads(recipe_path.read_text()) == asdict(recipe)
            if same:
                return open_bundle(out), False  # verifies every hash: a damaged bundle is exported again
        except (FedyoloError, ValueError) as e:
            log.warning("bundle %s is unusable (%s); exporting it again", out, e)
    # A load report and a weights bar per task are noise here; transformers reads these at its import.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from fedyolo.export.pipeline import export_onnx  # torch: only when an export is needed

    recipe_path.unlink(missing_ok=True)
    if out.exists():
        if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
            raise FedyoloError(f"{out} exists and is not a bundle; give another --out")
        shutil.rmtree(out)  # a bundle of another recipe: its backbone or labels differ
    for i, plan in enumerate(plans):
        export_onnx(
            out,
            plan.task_id,
            plan.labels,
            backbone=backbone,
            module=module,
            max_length=max_length,
            seed=seed,
            force=True,
            show_progress=True,
        )
        if on_export is not None:
            on_export(i, plan.task_id)
    recipe_path.write_text(json.dumps(asdict(recipe), indent=1))
    return open_bundle(out), True


def encode_plan(bundle: Bundle, plan: TaskPlan) -> tuple[list[ExampleArrays], ExampleArrays]:
    """Each client's share and the test split as the task's graph inputs."""
    task = bundle.task(plan.task_id)
    shares = [
        encode_examples(bundle, task, list(share), f"client {i} of {plan.task_id}")
        for i, share in enumerate(plan.shares)
    ]
    return shares, encode_examples(bundle, task, list(plan.test), f"{plan.task_id} test split")


def initial_module(bundle: Bundle, task_id: str) -> ModuleWeights:
    """The task's module as exported: round 0 of every federation and of every local baseline."""
    task = bundle.task(task_id)
    return decode_module(bundle.task_file(task_id, MODULE_WEIGHTS).read_bytes(), task)
