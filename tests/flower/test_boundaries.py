"""Flower is an extra: the base install, the runtime, the server and the CLI never import it."""

from __future__ import annotations

import subprocess
import sys

import pytest

PARTS = [
    "fedyolo.cli",
    "fedyolo.runtime.client",
    "fedyolo.runtime.ort_trainer",
    "fedyolo.fedserver.app",
    "fedyolo.fedserver.fold",
    "fedyolo.simulate",
    "fedyolo.flower.command",
]


@pytest.mark.parametrize("module", PARTS)
def test_importing_a_part_loads_no_flower(module: str) -> None:
    code = (
        f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'flwr', 'ray'}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"


def test_fedyolo_flower_help_runs_without_loading_flower() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom fedyolo.cli import app\n"
        "r = CliRunner().invoke(app, ['flower', 'simulate', '--help'])\n"
        "assert r.exit_code == 0, r.output\nprint('flwr' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False"
