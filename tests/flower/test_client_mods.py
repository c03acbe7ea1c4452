"""Client-side DP: the ClientApp clips a training reply to the norm the DP wrapper sends, and only then."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity

from fedyolo.flower.client_app import privacy_mod
from fedyolo.flower.records import CONFIG_KEY, MODULE_KEY


def _train_message(config: dict[str, float]) -> Message:
    content = RecordDict(
        {MODULE_KEY: ArrayRecord({"w": Array(np.zeros(4, np.float32))}), CONFIG_KEY: ConfigRecord(config)}
    )
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def _trains_far(msg: Message, context: Context) -> Message:
    return Message(
        RecordDict({MODULE_KEY: ArrayRecord({"w": Array(np.full(4, 3.0, np.float32))})}), reply_to=msg
    )


def _norm(reply: Message) -> float:
    return float(np.linalg.norm(reply.content.array_records[MODULE_KEY]["w"].numpy()))


def test_a_training_reply_is_clipped_to_the_wrappers_norm_and_others_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Messages outside a run need the identity Flower's runtime sets for a ClientApp process
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1, raising=False)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    clipped = privacy_mod(_train_message({KEY_CLIPPING_NORM: 0.5, "lr": 0.1}), context, _trains_far)
    untouched = privacy_mod(_train_message({"lr": 0.1}), context, _trains_far)
    assert abs(_norm(clipped) - 0.5) < 1e-5
    assert abs(_norm(untouched) - 6.0) < 1e-5
