"""`fedyolo flower new` writes a Flower app project that Flower's own validator accepts."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flwr.common.config import validate_config
from typer.testing import CliRunner

from fedyolo.cli import app
from fedyolo.flower.settings import FlowerRun


def test_new_writes_a_valid_flower_app_over_our_apps(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    # Execute
    result = CliRunner().invoke(
        app,
        ["flower", "new", str(tmp_path / "myfed"), "--bundle", str(tiny_bert_bundle), "--task", "topics",
         "--rounds", "3", "--set", "strategy=fedavgm", "--set", "server-momentum=0.5"],
    )  # fmt: skip

    # Assert: Flower accepts it; the components are ours; the run config reads back as the plan asked for
    assert result.exit_code == 0, result.output
    config = tomllib.loads((tmp_path / "myfed" / "pyproject.toml").read_text())
    valid, errors, _ = validate_config(config, check_module=True, project_dir=tmp_path / "myfed")
    assert valid, errors
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedyolo.flower.client_app:app"
    run = FlowerRun.from_run_config(config["tool"]["flwr"]["app"]["config"])
    assert run.plan.rounds == 3 and run.plan.strategy == "fedavgm"
    assert run.plan.strategy_params.momentum == 0.5 and run.bundle == tiny_bert_bundle.resolve()


def test_new_refuses_a_task_the_bundle_lacks(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["flower", "new", str(tmp_path / "x"), "--bundle", str(tiny_bert_bundle), "--task", "language"]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "x" / "pyproject.toml").exists()
