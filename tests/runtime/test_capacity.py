"""Checks a device makes before it runs: the backend a task was exported for, the longest sequence the
backbone takes, and whether a batch can fit in the memory available."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.capacity import (
    check_backend,
    check_fits,
    check_sequence,
    estimate_step,
    max_positions,
    mem_available,
    task_backends,
)
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import FileEntry


def test_a_task_exported_for_another_backend_is_refused_naming_both(tiny_bert_bundle: Path) -> None:
    # Prepare: the same task as an ExecuTorch export would list it: a program, no ORT graphs
    task = open_bundle(tiny_bert_bundle, verify=False).task("topics")
    pte_only = replace(
        task, files={"program.pte": FileEntry("0" * 64, 1), "module.safetensors": FileEntry("0" * 64, 1)}
    )

    # Execute / Assert
    assert task_backends(task) == ["ort"]
    check_backend(task, "ort")
    with pytest.raises(
        FedyoloError, match=r"exported for executorch, not ort; use --backend executorch"
    ) as e:
        check_backend(pte_only, "ort")
    assert "\n" not in str(e.value)


def test_a_sequence_longer_than_the_position_embedding_is_refused(tiny_bert_bundle: Path) -> None:
    manifest = open_bundle(tiny_bert_bundle, verify=False).manifest
    longest = max_positions(manifest)

    check_sequence(manifest, longest)
    with pytest.raises(
        FedyoloError,
        match=rf"longer than backbone 'tiny-bert' allows \({longest} positions\); use --seq {longest} or less",
    ):
        check_sequence(manifest, longest + 1)
    with pytest.raises(FedyoloError, match="--seq 2 or more"):
        check_sequence(manifest, 1)


def test_a_batch_that_cannot_fit_is_refused_with_the_batch_that_would(tiny_bert_bundle: Path) -> None:
    # Prepare: 64 MiB available on a pretend device
    manifest = open_bundle(tiny_bert_bundle, verify=False).manifest
    available = 64 * 2**20

    # Execute
    small = check_fits(manifest, 8, 32, available=available)
    with pytest.raises(FedyoloError) as e:
        check_fits(manifest, 4096, 128, available=available)

    # Assert: the estimate grows with the batch, and the error names the numbers and a batch that fits
    assert small.total < available
    message = str(e.value)
    assert "only 64 MiB is available" in message
    fits = int(message.split("use --batch ")[1].split()[0])
    assert 1 <= fits < 4096
    assert check_fits(manifest, fits, 128, available=available).total <= available
    with pytest.raises(FedyoloError):
        check_fits(manifest, fits + 1, 128, available=available)


def test_the_estimate_is_linear_in_the_batch_and_quadratic_in_attention(tiny_bert_bundle: Path) -> None:
    manifest = open_bundle(tiny_bert_bundle, verify=False).manifest
    a, b = estimate_step(manifest, 4, 64), estimate_step(manifest, 8, 64)
    assert b.activation_bytes == 2 * a.activation_bytes
    assert estimate_step(manifest, 4, 128).activation_bytes > 2 * a.activation_bytes
    assert mem_available() > 0  # Linux: /proc/meminfo
