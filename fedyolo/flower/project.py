"""`fedyolo flower new DIR --bundle B --task T`: a Flower app project that runs fedyolo's apps.

The project is a pyproject.toml only: `[tool.flwr.app.components]` names the ServerApp and ClientApp of
the installed `fedyolo.flower` package, and `[tool.flwr.app.config]` holds every setting of the run
(`settings.FlowerRun`), so `flwr run DIR` and `flwr run DIR --run-config 'rounds=5'` work as they do for
any Flower app. Simulation options (`num-supernodes`) belong to the SuperLink connection in Flower's own
config ($FLWR_HOME/config.toml), not to the project; `connection_toml` writes such an entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedyolo.flower.settings import FlowerRun
from fedyolo.runtime.errors import FedyoloError

SERVER_APP = "fedyolo.flower.server_app:app"
CLIENT_APP = "fedyolo.flower.client_app:app"


def toml_value(value: Any) -> str:
    """A scalar as TOML (strings quoted and escaped, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def toml_table(name: str, values: Mapping[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def pyproject(run: FlowerRun, name: str) -> str:
    """The project's pyproject.toml: Flower's app sections over fedyolo's ServerApp and ClientApp."""
    return "\n".join(
        [
            "# A Flower app running fedyolo's ClientApp and ServerApp (written by `fedyolo flower new`).",
            "# Paths are as seen by the machines that run the apps: give a node its own bundle with",
            "# --node-config 'bundle=\"/path/to/bundle\"'.",
            toml_table(
                "project",
                {
                    "name": name,
                    "version": "1.0.0",
                    "description": f"fedyolo federated {run.task} over one frozen backbone",
                    "license": "Apache-2.0",
                },
            )
            + 'dependencies = ["fedyolo[flower]"]\n',
            toml_table("tool.flwr.app", {"publisher": "fedyolo"}),
            toml_table("tool.flwr.app.components", {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}),
            toml_table("tool.flwr.app.config", run.to_run_config()),
        ]
    )


def connection_toml(name: str, address: str | None = None, num_supernodes: int = 10) -> str:
    """A `[superlink.NAME]` entry for $FLWR_HOME/config.toml: a SuperLink at `address` (insecure, for
    loopback), or Flower's local simulation with `num_supernodes` virtual nodes when `address` is None."""
    if address is None:
        return (
            toml_table(f"superlink.{name}", {"address": ":local:"})
            + "\n"
            + toml_table(f"superlink.{name}.options", {"num-supernodes": num_supernodes})
        )
    return toml_table(f"superlink.{name}", {"address": address, "insecure": True})


def new_project(folder: Path, run: FlowerRun, force: bool = False) -> Path:
    """Write the project into `folder` (created); an existing pyproject.toml is kept unless `force`."""
    target = folder / "pyproject.toml"
    if target.exists() and not force:
        raise FedyoloError(f"{target} exists; give another folder or --force")
    name = re.sub(r"[^a-z0-9-]+", "-", f"fedyolo-{run.task}".lower()).strip("-")
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(pyproject(run, name))
    return target
