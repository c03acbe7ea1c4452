"""The shared ONNX Runtime arena: a second task, and a task's eval, reuse the memory a step freed.

Memory is measured in a fresh interpreter (this file run as a script), so a figure is that process's
own. The assertions compare a process with itself (what the second task added against what the first
added), never an absolute MB figure: they hold on any machine, and fail if each session gets its own
arena again (the control arm shows they would).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
from fedyolo.runtime.profiler import peak_rss_bytes, synthetic_batch

# tiny-bert at its longest sequence: the attention scores make a step's activations tens of MB,
# well above malloc's noise, while a step stays well under a second
BATCH, SEQ = 48, 128


def stepped(
    bundle_dir: Path, shared_arena: bool, steps: int = 4
) -> tuple[list[float], dict[str, np.ndarray]]:
    bundle = open_bundle(bundle_dir, tasks=["topics"])
    trainer = OrtTrainer(bundle, "topics", backbone=SharedBackbone(bundle, shared_arena=shared_arena))
    losses = [
        trainer.step(synthetic_batch(bundle.manifest, trainer.task, 8, 16, seed=i)) for i in range(steps)
    ]
    return losses, trainer.get_module()


def test_the_shared_arena_leaves_training_bit_identical(tiny_bert_bundle: Path) -> None:
    # Execute: the same steps with an arena per session and with the one shared arena
    losses_own, module_own = stepped(tiny_bert_bundle, shared_arena=False)
    losses_shared, module_shared = stepped(tiny_bert_bundle, shared_arena=True)

    # Assert: every loss and every trained weight equal to the bit
    assert losses_shared == losses_own
    for name, value in module_own.items():
        np.testing.assert_array_equal(module_shared[name], value)


def measure(bundle_dir: str, shared_arena: bool) -> dict[str, int]:
    """Peak RSS after loading two tasks, after task A's steps, A's eval, then task B's steps."""
    bundle = open_bundle(bundle_dir, tasks=["topics", "second"], verify=False)
    shared = SharedBackbone(bundle, shared_arena=shared_arena)
    a, b = (OrtTrainer(bundle, t, backbone=shared) for t in ("topics", "second"))
    peaks = {"loaded": peak_rss_bytes()}
    for trainer, after in ((a, "a_steps"), (b, "b_steps")):
        batch = synthetic_batch(bundle.manifest, trainer.task, BATCH, SEQ)
        for _ in range(3):
            trainer.step(batch)
        peaks[after] = peak_rss_bytes()
        if trainer is a:
            a.predict({k: v for k, v in batch.items() if k != "labels"})
            peaks["a_eval"] = peak_rss_bytes()
    return peaks


def measured(bundle_dir: Path, shared_arena: bool) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, __file__, str(bundle_dir), json.dumps(shared_arena)],
        capture_output=True,
        text=True,
        check=True,
    )
    peaks: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


@pytest.fixture(scope="module")
def two_task_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bert_bundle: Path) -> Path:
    """tiny_bert_bundle plus a second LoRA task over the same backbone (the same activations per step)."""
    import shutil

    from fedyolo.export.pipeline import export_onnx

    root = Path(shutil.copytree(tiny_bert_bundle, tmp_path_factory.mktemp("arena") / "bundle"))
    export_onnx(root, "second", ["x", "y", "z"], backbone="tiny-bert", module="lora", show_progress=False)
    return root


def test_a_second_task_and_the_eval_reuse_the_first_tasks_step_memory(two_task_bundle: Path) -> None:
    # Execute: the runtime's default (one shared arena) and, as the control, an arena per session
    shared = measured(two_task_bundle, shared_arena=True)
    own = measured(two_task_bundle, shared_arena=False)

    # Assert: A's steps need tens of MB (else the test measures nothing); with the shared arena, A's eval
    # and B's steps (the same shapes) add little to the peak; with an arena each, B's steps add about A's
    first = shared["a_steps"] - shared["loaded"]
    assert first > 10 * 2**20, shared
    assert shared["a_eval"] - shared["a_steps"] < 0.1 * first, shared  # one task: eval in the step's memory
    assert shared["b_steps"] - shared["a_steps"] < 0.25 * first, shared
    own_first = own["a_steps"] - own["loaded"]
    assert own["a_eval"] - own["a_steps"] > 0.2 * own_first, own  # measured: 25 of 60 MB
    assert own["b_steps"] - own["a_steps"] > 0.6 * own_first, own  # measured: 78 of 60 MB
    assert shared["b_steps"] < own["b_steps"] - 0.5 * own_first, (shared, own)


if __name__ == "__main__":  # the worker: python test_ort_arena.py BUNDLE true|false
    print(json.dumps(measure(sys.argv[1], json.loads(sys.argv[2]))))
