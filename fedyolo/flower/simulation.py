"""Many virtual clients under Flower's simulation engine (Ray), in one command.

`simulate_flower` runs the project's ServerApp and ClientApp with `flwr.simulation.run_simulation`: one
virtual SuperNode per client, each with `partition-id` / `num-partitions`, so client `c` trains the same
Dirichlet share, by the same seeded stream, as client `c` of `fedyolo simulate`. Ray runs the ClientApps
in `actors` worker processes; each keeps one trainer over one memory-mapped backbone for all its nodes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from fedyolo.flower.settings import FlowerRun
from fedyolo.flower.strategy import HISTORY_FILE

log = logging.getLogger(__name__)


def simulate_flower(run: FlowerRun, clients: int, actors: int = 0, verbose: bool = False) -> dict[str, Any]:
    """Run `run` over `clients` virtual SuperNodes with `actors` Ray workers (0: one per core).

    Returns the ServerApp's history (also in `run.out/<task>/history.json`).
    """
    from flwr.simulation import run_simulation

    from fedyolo.flower.client_app import build_client_app
    from fedyolo.flower.server_app import build_server_app

    cores = os.cpu_count() or 1
    actors = actors or cores
    settings = FlowerRun.from_run_config({"min-nodes": clients}, run)
    # Each actor asks for one of `actors` CPUs: Ray then runs exactly `actors` ClientApps at a time.
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": actors,
            "num_gpus": 0,
            "include_dashboard": False,
            "log_to_driver": verbose,
        },
    }
    run_simulation(
        server_app=build_server_app(settings),
        client_app=build_client_app(settings),
        num_supernodes=clients,
        backend_config=backend,  # type: ignore[arg-type]
        verbose_logging=verbose,
    )
    path = settings.out / settings.task / HISTORY_FILE
    history: dict[str, Any] = json.loads(path.read_text())
    return history
