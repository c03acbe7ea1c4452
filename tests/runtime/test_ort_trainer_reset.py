"""`set_module` starts training afresh: a trainer reused for another client or round trains exactly like a
new one (AdamW's moments and step do not leak from what it trained before), and rebuilding the ONNX
Runtime objects that takes never corrupts memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.local import encode_examples, train_epochs
from fedyolo.runtime.manifest import MODULE_WEIGHTS
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.wire import ModuleWeights, decode_module
from fedyolo.tasks import load_task


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from fedyolo.export.pipeline import export_onnx

    out = tmp_path_factory.mktemp("reset") / "bundle"
    labels = load_task("topics").labels
    export_onnx(out, "topics", labels, backbone="tiny-bert", max_length=16, show_progress=False)
    return open_bundle(out)


def initial(bundle: Bundle) -> ModuleWeights:
    return decode_module(bundle.task_file("topics", MODULE_WEIGHTS).read_bytes(), bundle.task("topics"))


def test_a_reused_trainer_trains_like_a_fresh_one(bundle: Bundle) -> None:
    # Prepare
    train = load_task("topics").train
    mine = encode_examples(bundle, bundle.task("topics"), train[:48])
    other = encode_examples(bundle, bundle.task("topics"), train[48:96])

    def run(trainer: OrtTrainer) -> ModuleWeights:
        trainer.set_module(initial(bundle))
        train_epochs(trainer, mine, 2, 16, seed=0)
        return trainer.get_module()

    # Execute
    fresh = run(OrtTrainer(bundle, "topics", lr=5e-3, threads=1))
    reused = OrtTrainer(bundle, "topics", lr=5e-3, threads=1)
    reused.set_module(initial(bundle))
    train_epochs(reused, other, 3, 16, seed=1)  # its moments and step now hold another client's history
    again = run(reused)

    # Assert
    for name in fresh:
        np.testing.assert_array_equal(fresh[name], again[name])


def test_many_set_module_calls_leave_the_heap_intact(bundle: Bundle) -> None:
    """glibc's checks on (MALLOC_CHECK_=3): freeing the state before its users aborted within a few calls."""
    script = textwrap.dedent(
        f"""
        from fedyolo.runtime.bundle import open_bundle
        from fedyolo.runtime.local import encode_examples, train_epochs
        from fedyolo.runtime.manifest import MODULE_WEIGHTS
        from fedyolo.runtime.ort_trainer import OrtTrainer
        from fedyolo.runtime.wire import decode_module
        from fedyolo.tasks import load_task

        bundle = open_bundle({str(bundle.root)!r})
        spec = bundle.task("topics")
        initial = decode_module(bundle.task_file("topics", MODULE_WEIGHTS).read_bytes(), spec)
        data = encode_examples(bundle, spec, load_task("topics").train[:16])
        trainers = [OrtTrainer(bundle, "topics", threads=1) for _ in range(2)]
        for i in range(60):
            trainers[i % 2].set_module(initial)
            train_epochs(trainers[i % 2], data, 1, 16, seed=i)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MALLOC_CHECK_": "3"},
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
