"""fedyolo's ExecuTorch kernel library (`fedyolo::linear.out`, `fedyolo::mm.out` over a BLAS): a program
exported with `kernels="fedyolo"` trains to the same loss and gradients as the one on ExecuTorch's own
kernels, and a device without the library gets a one-line error that says how to build it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch", reason="the 'executorch' extra is not installed (make setup installs it)")

from fedyolo.runtime import et_kernels
from fedyolo.runtime.backends import make_trainer
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.executorch_files import PROGRAM
from tests.export.test_executorch import LABELS, LOSS_RTOL, assert_close_grads, make_batch, torch_reference


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny-BERT LoRA task (same seed) exported on each kernel set."""
    from fedyolo.export.executorch_bundle import export_executorch

    if not et_kernels.library_path().is_file():
        et_kernels.build()  # `make setup` builds it; a bare checkout builds it here (~2 s of g++)
    out = {}
    for kernels in ("executorch", "fedyolo"):
        out[kernels] = tmp_path_factory.mktemp(kernels) / "bundle"
        export_executorch(out[kernels], "lora", LABELS, "tiny-bert", "lora", max_length=16, batch=4,
                          show_progress=False, kernels=kernels)  # fmt: skip
    return out


def operators(program: Path) -> set[str]:
    """The operator names in a program's operator table (`ns::name`, stored as plain strings)."""
    return {m.decode() for m in re.findall(rb"(?:aten|fedyolo)::\w+", program.read_bytes())}


def test_the_fedyolo_program_runs_its_gemms_permutes_and_gelu_on_the_library(
    bundles: dict[str, Path],
) -> None:
    ours = operators(bundles["fedyolo"] / "tasks" / "lora" / PROGRAM)
    theirs = operators(bundles["executorch"] / "tasks" / "lora" / PROGRAM)
    moved = {"linear", "mm", "permute", "erf", "gelu"}
    assert {f"fedyolo::{op}" for op in moved} <= ours
    assert not ours & {"aten::linear", "aten::mm", "aten::permute_copy", "aten::erf", "aten::gelu"}
    assert not any(op.startswith("fedyolo::") for op in theirs)
    assert et_kernels.program_needs_kernels(bundles["fedyolo"] / "tasks" / "lora" / PROGRAM)
    assert not et_kernels.program_needs_kernels(bundles["executorch"] / "tasks" / "lora" / PROGRAM)


def test_loss_and_gradients_equal_the_portable_program_and_torch(bundles: dict[str, Path]) -> None:
    # Arrange: 6 rows = one full piece of the program's batch 4 and one padded piece
    batch = make_batch(bundles["fedyolo"])
    trainers = {
        k: make_trainer(open_bundle(b, tasks=["lora"]), "lora", "executorch") for k, b in bundles.items()
    }

    # Act
    got = {k: t.gradients(batch) for k, t in trainers.items()}  # type: ignore[attr-defined]
    want_loss, want_grads = torch_reference(bundles["fedyolo"], "lora", batch)

    # Assert
    assert et_kernels._loaded, "the fedyolo program trained without the kernel library loaded"
    assert got["fedyolo"][0] == pytest.approx(got["executorch"][0], rel=LOSS_RTOL)
    assert got["fedyolo"][0] == pytest.approx(want_loss, rel=LOSS_RTOL)
    assert_close_grads(got["fedyolo"][1], got["executorch"][1], "fedyolo kernels vs executorch kernels")
    assert_close_grads(got["fedyolo"][1], want_grads, "fedyolo kernels vs torch")


def test_adamw_steps_follow_the_portable_program(bundles: dict[str, Path]) -> None:
    trainers = {
        k: make_trainer(open_bundle(b, tasks=["lora"]), "lora", "executorch") for k, b in bundles.items()
    }
    batch = make_batch(bundles["fedyolo"], seed=1)
    losses = {k: [t.step(batch) for _ in range(5)] for k, t in trainers.items()}
    np.testing.assert_allclose(losses["fedyolo"], losses["executorch"], rtol=1e-4)
    assert losses["fedyolo"][-1] < losses["fedyolo"][0]


def test_a_missing_library_names_the_build_command(
    bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(et_kernels, "_loaded", [])
    monkeypatch.setenv("FEDYOLO_ET_KERNELS", str(tmp_path / "absent.so"))
    bundle = open_bundle(bundles["fedyolo"], tasks=["lora"])
    with pytest.raises(
        FedyoloError,
        match=r"absent\.so is missing: build it with `python -m fedyolo\.runtime\.et_kernels build`",
    ):
        make_trainer(bundle, "lora", "executorch")


def test_an_unknown_kernel_set_is_refused(tmp_path: Path) -> None:
    from fedyolo.export.executorch_bundle import export_executorch

    with pytest.raises(FedyoloError, match=r"--kernels 'mkl' is not one of executorch, fedyolo"):
        export_executorch(tmp_path / "b", "t", LABELS, "tiny-bert", "head", max_length=8, batch=2,
                          show_progress=False, kernels="mkl")  # fmt: skip
    assert not (tmp_path / "b").exists()  # refused before any export work


def test_the_library_builds_from_its_source(tmp_path: Path) -> None:
    import ctypes

    built = et_kernels.build(tmp_path / "libk.so")
    assert built.stat().st_size > 10_000
    assert hasattr(ctypes.CDLL(str(built)), "fedyolo_et_kernels_init")  # loads: libexecutorch resolves
    assert [p.name for p in tmp_path.iterdir()] == ["libk.so"]  # no partial file left behind
