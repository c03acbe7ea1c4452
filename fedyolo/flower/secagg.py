"""Secure aggregation (Flower's SecAgg+): the server learns the weighted mean of a round's changes, never one.

Flower 1.42 runs SecAgg+ only as a legacy workflow (`SecAggPlusWorkflow` inside a `LegacyContext`, with
a legacy `Strategy`), and its client half (`secaggplus_mod`) reads and writes the legacy `fitins.*` /
`fitres.*` records. So a secure run speaks those records end to end:

    server  SecureFold.configure_fit    the global module and the round's plan, plus the bounds: `clip-to`
                                        (the fold's clip bound from the norms clients reported so far) and
                                        `example-cap` (its cap on claimed examples, also SecAgg+'s
                                        `max_weight`)
    client  train_masked                trains as ever, then replies with its clipped change to the module
                                        and its capped example count; `secaggplus_mod` quantises, masks and
                                        sends them, so the change itself never leaves the node in clear
    server  SecureFold.aggregate_fit    the unmasked weighted mean of the changes -> `apply_delta`, the same
                                        FedAvg / FedAvgM / FedAdam step as every other fold

What moves and what is lost. The fold's bounds (clip the change, cap the weight) are applied by each client
to itself, since the server cannot see one update: honest clients are bounded exactly as in the clear,
but a malicious client can ignore them, limited only by SecAgg+'s per-value range (`secagg-range`) and
weight (`max_weight`). The robust aggregates (median, trimmed mean) need every update and are refused.
Values are quantised to 2**22 steps over [-range, range] (range 1.0: steps of 4.8e-7), so a secure round
equals the clear one to about that, times the number of clients. Norms and claims still reach the server
in clear (a metric per client), so the adaptive bounds work as in the clear.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedyolo.fedserver.fold import RoundFold, apply_delta, is_finite
from fedyolo.fedserver.strategies import clip_delta, delta_norm
from fedyolo.flower.nodes import PARTITION_ID, Node, evaluate_node, train_node
from fedyolo.flower.records import arrays_module, module_arrays, number, plan_config
from fedyolo.flower.settings import FlowerRun
from fedyolo.flower.strategy import FoldStrategy, RoundLog
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module

log = logging.getLogger(__name__)

CLIP_TO = "clip-to"  # the L2 bound a client clips its change to; 0: none
EXAMPLE_CAP = "example-cap"  # the most examples a client may weigh (SecAgg+'s max_weight)
NORM, CLAIMED = "norm", "claimed"  # what a client reports in clear: its change's norm, its examples


# --- the client's half ------------------------------------------------------------------------------


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` on the messages of a SecAgg+ run (those carrying its stage config);
    every other message passes untouched, so one ClientApp serves secure runs and clear ones."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_legacy_fit(msg: Message) -> bool:
    return "fitins.parameters" in msg.content.array_records


def is_legacy_evaluate(msg: Message) -> bool:
    return "evaluateins.parameters" in msg.content.array_records


def train_masked(node: Node, msg: Message) -> Message:
    """Train the round, then reply (legacy `fitres`) with the change to the module, clipped to the
    server's bound, and the example count, capped; `secaggplus_mod` masks both before they leave."""
    task = node.trainer.task
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    start = arrays_module(parameters_to_ndarrays(fitins.parameters), task)
    examples, metrics = train_node(node, config, start)
    trained = node.trainer.get_module()
    change = {name: trained[name].astype(np.float64) - start[name] for name in start}
    norm = delta_norm(change)
    change = dict(clip_delta(change, number(config.get(CLIP_TO, 0.0), CLIP_TO)))
    cap = number(config.get(EXAMPLE_CAP, 0.0), EXAMPLE_CAP)
    weight = max(1, min(examples, math.floor(cap))) if cap > 0 else examples
    reply = FitRes(
        Status(Code.OK, "trained"),
        ndarrays_to_parameters(module_arrays(change, task)),
        num_examples=weight,
        metrics={**metrics, NORM: norm, CLAIMED: examples, PARTITION_ID: node.partition},
    )
    return Message(compat.fitres_to_recorddict(reply, keep_input=False), reply_to=msg)


def evaluate_legacy(node: Node, context: Context, msg: Message) -> Message:
    """A legacy `evaluateins` (what the secure workflow sends) answered as `evaluateres`."""
    ins = compat.recorddict_to_evaluateins(msg.content, keep_input=True)
    weights = arrays_module(parameters_to_ndarrays(ins.parameters), node.trainer.task)
    result = evaluate_node(node, context, str(ins.config.get("split", "local")), weights)
    reply = EvaluateRes(
        Status(Code.OK, "evaluated"), result.loss, result.examples, {"accuracy": result.accuracy}
    )
    return Message(compat.evaluateres_to_recorddict(reply), reply_to=msg)


# --- the server's half ------------------------------------------------------------------------------


class SecureFold(LegacyStrategy):  # type: ignore[misc]
    """The legacy strategy SecAgg+ calls: `base` (a `FoldStrategy`) draws the cohort, keeps the history
    and writes each round's module; the step is `apply_delta` over the securely aggregated change."""

    def __init__(self, base: FoldStrategy, initial: ModuleWeights, workflow: SecAggPlusWorkflow) -> None:
        if base.plan.aggregate != "mean":
            raise FedyoloError(
                f"aggregate={base.plan.aggregate} needs every update, which secure aggregation hides: "
                "use aggregate=mean with privacy=secagg"
            )
        self.base = base
        self.task = base.task
        self.global_weights = initial
        self.workflow = workflow
        self.default_max_weight = workflow.max_weight

    def __repr__(self) -> str:
        return f"SecureFold({self.task.task_id!r}, {self.base.plan})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(module_arrays(self.global_weights, self.task))

    def _proxies(self, client_manager: ClientManager, round_id: int) -> list[tuple[int, ClientProxy]]:
        by_node = {p.node_id: p for p in client_manager.all().values()}
        return [(c, by_node[n]) for c, n in self.base.cohort(round_id) if n in by_node]

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.base.started = time.perf_counter()
        self.global_weights = arrays_module(parameters_to_ndarrays(parameters), self.task)
        clip, cap = RoundFold(self.global_weights, self.base.plan, self.base.state).bounds()
        # SecAgg+ reads max_weight after this call, at the round's setup: the cap is the round's weight bound.
        self.workflow.max_weight = cap if math.isfinite(cap) else self.default_max_weight
        config: dict[str, Scalar] = {
            **plan_config(self.base.plan.for_round(server_round), self.task.task_id, self.base.seed),
            CLIP_TO: clip,
            EXAMPLE_CAP: float(self.workflow.max_weight),
        }
        cohort = self._proxies(client_manager, server_round)
        sent = sum(len(t) for t in parameters.tensors) * len(cohort)
        self.base.history.append(RoundLog(server_round, [c for c, _ in cohort], download_bytes=sent))
        return [(proxy, FitIns(parameters, config)) for _, proxy in cohort]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        record = self.base.history[-1]
        record.set_aside += [f"failure: {f}" for f in failures]
        if not results:
            log.warning("round %d: no masked update arrived; the module stays", server_round)
            return None, {}
        ordered = sorted(results, key=lambda r: self.base.clients.get(r[0].node_id, -1))
        # Every result carries the same unmasked mean: SecAgg+ hands the strategy one aggregate.
        mean = arrays_module(parameters_to_ndarrays(ordered[0][1].parameters), self.task)
        state = self.base.state
        claimed = [number(r.metrics.get(CLAIMED), CLAIMED) for _, r in ordered]
        norms = [*state.norms, *(number(r.metrics.get(NORM), NORM) for _, r in ordered)]
        new, new_state = apply_delta(
            self.global_weights, mean, self.base.plan, state, norms, [*state.claims, *claimed]
        )
        if not is_finite(new, new_state):
            record.set_aside.append("the fold's result is not finite; the module stays")
            return None, {}
        self.base.state = new_state
        new = decode_module(encode_module(new, self.task), self.task)  # committed through the wire format
        record.examples = sum(claimed)
        losses = [float(v) for _, r in ordered if isinstance(v := r.metrics.get("train_loss"), int | float)]
        record.train_loss = float(np.mean(losses)) if losses else None
        self.global_weights = new
        metrics: dict[str, Scalar] = {"updates": len(ordered), "examples": record.examples}
        return ndarrays_to_parameters(module_arrays(new, self.task)), metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        weights = arrays_module(parameters_to_ndarrays(parameters), self.task)
        self.base.write(server_round, weights)
        if not (server_round % self.base.eval_every == 0 or server_round == self.base.plan.rounds):
            return []
        evaluators = self._proxies(client_manager, server_round)[:1]
        return [(proxy, EvaluateIns(parameters, {"split": "test"})) for _, proxy in evaluators]

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        total = sum(r.num_examples for _, r in results)
        if total == 0:
            return None, {}
        loss = sum(r.loss * r.num_examples for _, r in results) / total
        accuracy = (
            sum(number(r.metrics.get("accuracy"), "accuracy") * r.num_examples for _, r in results) / total
        )
        self.base.record_evaluation(server_round, accuracy, loss)
        return loss, {"accuracy": accuracy}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None  # evaluation runs on a client, which holds the runtime and the held-out split


def run_secure(
    grid: Grid, context: Context, base: FoldStrategy, initial: ModuleWeights, settings: FlowerRun
) -> None:
    """Every round of `settings.plan` under SecAgg+, folded by `SecureFold` over `base`."""
    workflow = SecAggPlusWorkflow(
        num_shares=settings.secagg_shares,
        reconstruction_threshold=settings.secagg_threshold,
        clipping_range=settings.secagg_range,
        timeout=settings.timeout_s,
    )
    strategy = SecureFold(base, initial, workflow)
    legacy = LegacyContext(
        context,
        config=ServerConfig(num_rounds=settings.plan.rounds, round_timeout=settings.timeout_s),
        strategy=strategy,
    )
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
