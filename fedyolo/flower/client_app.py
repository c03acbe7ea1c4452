"""The Flower ClientApp: the runtime's trainer and `train_round` behind Flower's Message API.

    @app.query()     "which client are you": the node's partition id and task (the ServerApp maps
                     Flower's node ids to fedyolo's client numbers with it, to draw the same cohort)
    @app.train()     the round's module (ArrayRecord) and plan (ConfigRecord) in, `train_round`, the
                     trained module and its example count out; under secure aggregation the legacy
                     records SecAgg+ speaks, and the clipped change masked by Flower's `secaggplus_mod`
    @app.evaluate()  the module on the task's held-out split ("test") or on the node's own data

The node's trainer and data: nodes.py. Secure aggregation: secagg.py.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedyolo.flower import secagg
from fedyolo.flower.nodes import PARTITION_ID, evaluate_node, node_of, train_node
from fedyolo.flower.records import CONFIG_KEY, EXAMPLES, METRICS_KEY, MODULE_KEY, module_record, record_module
from fedyolo.flower.settings import FlowerRun

log = logging.getLogger(__name__)


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` on the training messages of a run under client-side DP (those whose
    config carries the wrapper's clipping norm); every other message passes untouched."""
    config = msg.content.config_records.get(CONFIG_KEY)
    if msg.metadata.message_type == MessageType.TRAIN and config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def build_client_app(defaults: FlowerRun | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp whose settings are `defaults` overridden by the run config (what `flwr run` sends).

    mods: Flower mods around every message; then `secure_mod` (SecAgg+ masking, for runs that ask for
    it) and `privacy_mod` (client-side DP clipping) are always the last.
    """
    app = ClientApp(mods=[*(mods or []), secagg.secure_mod, privacy_mod])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Name this node: its partition (or -1 with its own data), task and example count."""
        node = node_of(context, defaults)
        reply = ConfigRecord(
            {
                PARTITION_ID: node.partition,
                "task": node.trainer.task.task_id,
                EXAMPLES: len(node.data["labels"]),
            }
        )
        return Message(RecordDict({CONFIG_KEY: reply}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the round's module by the round's plan; reply with the trained module and examples."""
        node = node_of(context, defaults)
        if secagg.is_legacy_fit(msg):
            return secagg.train_masked(node, msg)
        task = node.trainer.task
        config = msg.content.config_records[CONFIG_KEY]
        weights = record_module(msg.content.array_records[MODULE_KEY], task)
        examples, metrics = train_node(node, config, weights)
        out = MetricRecord({**metrics, EXAMPLES: examples, PARTITION_ID: node.partition})
        content = RecordDict({MODULE_KEY: module_record(node.trainer.get_module(), task), METRICS_KEY: out})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Loss and accuracy of the sent module on the held-out split ("test") or the node's own data."""
        node = node_of(context, defaults)
        if secagg.is_legacy_evaluate(msg):
            return secagg.evaluate_legacy(node, context, msg)
        config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
        weights = record_module(msg.content.array_records[MODULE_KEY], node.trainer.task)
        result = evaluate_node(node, context, str(config.get("split", "local")), weights)
        metrics = MetricRecord({"accuracy": result.accuracy, "loss": result.loss, EXAMPLES: result.examples})
        return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)

    return app


# What a Flower app project names as its clientapp (`fedyolo flower new` writes it into pyproject.toml).
app = build_client_app()
