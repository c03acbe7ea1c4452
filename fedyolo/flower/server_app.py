"""The Flower ServerApp: one task's federation by the project's plan, folded by `FoldStrategy`.

Reads the run config (`settings.FlowerRun`), opens the bundle (manifest and the initial module only: no
ONNX Runtime on the server), asks every node which client it is, wraps the strategy in Flower's DP
wrapper when asked, and runs `plan.rounds` rounds. Each round's module lands in `out/<task>/` in the wire
format (safetensors) beside `state.safetensors` and `history.json`, so `fedyolo export peft BUNDLE --task T
--module out/T/module.safetensors` works on the result.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedyolo.flower.records import module_record
from fedyolo.flower.settings import FlowerRun
from fedyolo.flower.strategy import FoldStrategy
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import MODULE_WEIGHTS
from fedyolo.runtime.wire import decode_module

log = logging.getLogger(__name__)


def with_privacy(strategy: FoldStrategy, settings: FlowerRun, sampled: int) -> Strategy:
    """`strategy` inside Flower's fixed-clipping DP wrapper (server- or client-side), or as it is."""
    if settings.privacy not in ("server", "client"):
        return strategy
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if settings.privacy == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return wrapper(
        strategy,
        noise_multiplier=settings.noise_multiplier,
        clipping_norm=settings.dp_clip,
        num_sampled_clients=sampled,
    )


def run_server(grid: Grid, settings: FlowerRun, context: Context | None = None) -> FoldStrategy:
    """Discover the nodes, then run every round; returns the strategy (its history and state).

    Under `privacy="secagg"` the rounds run in Flower's SecAgg+ workflow (secagg.py), which needs the
    ServerApp's `context`."""
    bundle = open_bundle(settings.bundle)
    task = bundle.task(settings.task)
    initial = decode_module(bundle.task_file(task.task_id, MODULE_WEIGHTS).read_bytes(), task)
    fold = FoldStrategy(
        task,
        settings.plan,
        fraction=settings.fraction,
        seed=settings.seed,
        out=settings.out,
        eval_every=settings.eval_every,
        min_nodes=settings.min_nodes,
    )
    clients = fold.discover(grid, timeout=settings.timeout_s)
    sampled = max(1, min(len(clients), round(settings.fraction * len(clients))))
    log.info("%d clients for task %r, %d a round", len(clients), task.task_id, sampled)
    if settings.privacy == "secagg":
        if context is None:
            raise FedyoloError("a secure-aggregation run needs the ServerApp's context")
        from fedyolo.flower.secagg import run_secure

        run_secure(grid, context, fold, initial, settings)
        return fold
    strategy = with_privacy(fold, settings, sampled)
    strategy.start(
        grid, module_record(initial, task), num_rounds=settings.plan.rounds, timeout=settings.timeout_s
    )
    return fold


def build_server_app(defaults: FlowerRun | None = None) -> ServerApp:
    """A ServerApp whose settings are `defaults` overridden by the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = FlowerRun.from_run_config(context.run_config, defaults)
        run_server(grid, settings, context)

    return app


# What a Flower app project names as its serverapp (`fedyolo flower new` writes it into pyproject.toml).
app = build_server_app()
