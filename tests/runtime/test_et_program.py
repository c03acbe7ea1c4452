"""fedyolo's torch-free ExecuTorch runner (`et_program`, over ExecuTorch's C++ `Module`): a training run on
the executorch backend never loads torch or libtorch, a dynamic input dim takes any size up to its bound,
and a damaged program or a missing library is a one-line error that names the fix."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch", reason="the 'executorch' extra is not installed (make setup installs it)")

from fedyolo.runtime import et_program
from fedyolo.runtime.backends import make_trainer
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import BundleError, FedyoloError
from fedyolo.runtime.executorch_files import PROGRAM
from fedyolo.runtime.manifest import MANIFEST_NAME, file_entry, read_manifest
from tests.test_import_boundaries import FORBIDDEN, fresh_python, offenders


@pytest.fixture(scope="module")
def et_topics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-BERT bundle whose built-in task `topics` (LoRA) has only an ExecuTorch program."""
    from fedyolo.export.executorch_bundle import export_executorch
    from fedyolo.tasks import load_task

    if not et_program.library_path().is_file():
        et_program.build()  # `make setup` builds it; a bare checkout builds it here (~5 s of g++)
    out = tmp_path_factory.mktemp("et_topics") / "bundle"
    export_executorch(out, "topics", load_task("topics").labels, "tiny-bert", "lora", max_length=16,
                      batch=8, show_progress=False)  # fmt: skip
    return out


def test_training_on_executorch_never_loads_torch(et_topics: Path) -> None:
    # Prepare: `fedyolo train`'s own code, in a fresh interpreter where torch is installed
    code = textwrap.dedent(
        f"""
        import importlib.util, json, os, sys
        from pathlib import Path
        from rich.console import Console
        from fedyolo.cli.train import train_command

        quiet = Console(file=open(os.devnull, "w"))
        logs = train_command(Path({str(et_topics)!r}), "topics", None, None, 2, 1e-2, 8, 0, None,
                             console=quiet, backend="executorch")
        maps = open("/proc/self/maps").read()
        print(json.dumps({{"losses": [log.train_loss for log in logs], "accuracy": logs[-1].test.accuracy,
                           "loaded": sorted(sys.modules), "libtorch": "libtorch" in maps,
                           "runner": "libfedyolo_et_runner" in maps,
                           "torch_installed": importlib.util.find_spec("torch") is not None}}))
        """
    )

    # Execute
    seen = fresh_python(code)

    # Assert: it trained, on the runner, and neither torch nor libtorch was loaded
    assert seen["torch_installed"]
    assert seen["losses"][1] < seen["losses"][0]
    assert seen["accuracy"] > 3 / len(read_manifest(et_topics).tasks["topics"].labels)  # 3x chance
    assert seen["runner"] and not seen["libtorch"]
    assert offenders(seen["loaded"], FORBIDDEN["cli"]) == []  # torch, transformers, export, server
    assert not [m for m in seen["loaded"] if m.startswith("executorch.extension.pybindings")]


@pytest.fixture(scope="module")
def dynamic_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-input program whose sequence dim is dynamic up to 16: x [2, seq, 4] float, ids [2, seq] int64."""
    import torch
    from executorch.exir import to_edge
    from torch.export import Dim

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))

        def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (x * self.w).sum(-1), ids.sum(-1)

    seq = Dim("seq", min=1, max=16)
    example = (torch.zeros(2, 16, 4), torch.zeros(2, 16, dtype=torch.int64))
    ep = torch.export.export(Scaled(), example, dynamic_shapes={"x": {1: seq}, "ids": {1: seq}})
    path = tmp_path_factory.mktemp("dynamic") / "scaled.pte"
    path.write_bytes(to_edge(ep).to_executorch().buffer)
    return path


@pytest.mark.parametrize("seq", [16, 5, 1])
def test_a_dynamic_dim_takes_any_size_up_to_its_bound(dynamic_program: Path, seq: int) -> None:
    rng = np.random.default_rng(seq)
    x = rng.standard_normal((2, seq, 4)).astype(np.float32)
    ids = rng.integers(0, 100, (2, seq)).astype(np.int64)

    scaled, sums = et_program.Program(dynamic_program).run("forward", [x, ids])

    assert isinstance(scaled, np.ndarray) and isinstance(sums, np.ndarray)
    np.testing.assert_allclose(scaled, x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32), rtol=1e-6)
    np.testing.assert_array_equal(sums, ids.sum(-1))


def test_inputs_the_program_cannot_take_are_one_line_errors(dynamic_program: Path) -> None:
    program = et_program.Program(dynamic_program)
    x, ids = np.zeros((2, 17, 4), np.float32), np.zeros((2, 17), np.int64)
    with pytest.raises(
        et_program.ProgramError, match=r"setting input 0 \(float32 \[2, 17, 4\]\) of method 'forward'"
    ):
        program.run("forward", [x, ids])
    with pytest.raises(
        et_program.ProgramError, match=r"Error::InvalidArgument .* input 1 \(float32 \[2, 4\]\)"
    ):
        program.run("forward", [x[:, :4], x[:, :4, 0]])
    with pytest.raises(et_program.ProgramError, match=r"method 'forward' takes 2 inputs, not 1"):
        program.run("forward", [x])
    with pytest.raises(et_program.ProgramError, match=r"No method named 'backward'"):
        program.run("backward", [x, ids])
    np.testing.assert_array_equal(program.run("forward", [x[:, :3], ids[:, :3]])[1], [0, 0])  # still usable


def test_a_damaged_program_is_refused_with_the_reexport_command(et_topics: Path, tmp_path: Path) -> None:
    # Prepare: the program cut in half, its manifest entry rehashed (as if exported so)
    out = Path(shutil.copytree(et_topics, tmp_path / "b"))
    program = out / "tasks" / "topics" / PROGRAM
    program.write_bytes(program.read_bytes()[: program.stat().st_size // 2])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    entry = file_entry(program)
    manifest["tasks"]["topics"]["files"][PROGRAM] = {"sha256": entry.sha256, "bytes": entry.bytes}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    garbage = tmp_path / "garbage.pte"
    garbage.write_bytes(os.urandom(4096))

    # Execute / Assert
    with pytest.raises(
        BundleError, match=r"ExecuTorch cannot load task 'topics' \(.*ExecuTorch Error::\w+ \(0x"
    ):
        make_trainer(open_bundle(out, tasks=["topics"]), "topics", "executorch")
    with pytest.raises(BundleError, match=r"re-export it with `fedyolo export executorch`$"):
        make_trainer(open_bundle(out, tasks=["topics"]), "topics", "executorch")
    with pytest.raises(
        et_program.ProgramError, match=r"ExecuTorch Error::\w+ \(0x[0-9a-f]+\) loading .*garbage\.pte"
    ):
        et_program.Program(garbage)


def test_a_missing_runner_names_the_build_command(
    et_topics: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(et_program, "_library", [])
    monkeypatch.setenv("FEDYOLO_ET_RUNNER", str(tmp_path / "absent.so"))
    with pytest.raises(
        FedyoloError,
        match=r"absent\.so is missing: build it with `python -m fedyolo\.runtime\.et_program build`",
    ):
        make_trainer(open_bundle(et_topics, tasks=["topics"]), "topics", "executorch")


def test_the_runner_builds_from_its_source(tmp_path: Path) -> None:
    import ctypes

    built = et_program.build(tmp_path / "librunner.so")
    assert hasattr(ctypes.CDLL(str(built)), "fedyolo_et_run")  # loads: libexecutorch and its kernels resolve
    assert [p.name for p in tmp_path.iterdir()] == ["librunner.so"]  # no partial file left behind
