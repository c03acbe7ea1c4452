"""Module weights and round plans as Flower records, and what a record costs on the wire.

A module travels as an `ArrayRecord` holding exactly the task's trainable tensors, in the manifest's
names and order, cast to the manifest's wire dtype: the same values `encode_module` would send, so a
module that went through Flower equals one that went through safetensors. The backbone never travels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.supercore.inflatable.inflatable_object import InflatableObject, get_all_nested_objects

from fedyolo.runtime.errors import ModuleWeightsError
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import RoundPlan
from fedyolo.runtime.wire import WIRE_DTYPES, ModuleWeights, check_module

MODULE_KEY = "arrays"  # Flower's default ArrayRecord key: its DP wrappers and mods find the module there
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
EXAMPLES = "num-examples"  # the weight key Flower's strategies and mods read


def module_record(weights: ModuleWeights, task: TaskSpec) -> ArrayRecord:
    """The module as an ArrayRecord: checked, the manifest's tensors only, in its wire dtype."""
    check_module(weights, task)
    dtype = WIRE_DTYPES[task.wire_dtype]
    return ArrayRecord(
        {t.name: Array(np.ascontiguousarray(weights[t.name], dtype=dtype)) for t in task.trainable}
    )


def record_module(record: ArrayRecord, task: TaskSpec) -> ModuleWeights:
    """An ArrayRecord read back as float32 module weights, checked against the manifest like `decode_module`."""
    allowed = (task.wire_dtype, "float32")
    weights: ModuleWeights = {}
    for name, array in record.items():
        if array.dtype not in allowed:
            raise ModuleWeightsError(f"tensor {name!r} is {array.dtype}; expected one of {allowed}")
        try:
            weights[name] = np.asarray(array.numpy(), dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ModuleWeightsError(f"tensor {name!r} is not a readable numpy array ({e})") from e
    check_module(weights, task)
    return weights


def plan_config(plan: RoundPlan, task_id: str, seed: int, **extra: Any) -> ConfigRecord:
    """The round's plan as the ConfigRecord a client trains by (`RoundPlan.to_json()` and the run's seed)."""
    return ConfigRecord({**plan.to_json(), "task": task_id, "seed": seed, **extra})


def config_plan(config: Mapping[str, Any]) -> RoundPlan:
    """The round plan in a ConfigRecord, type-checked by `RoundPlan.from_json` (other keys ignored)."""
    return RoundPlan.from_json(dict(config))


def number(value: object, what: str) -> float:
    """A record's value as a number; anything else (a string, a list, a bool) is a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is {value!r}; expected a number")
    return float(value)


def wire_bytes(obj: InflatableObject) -> int:
    """Bytes Flower sends for `obj`: every object of its tree, serialised (each pulled once per receiver)."""
    return sum(len(o.deflate()) for o in get_all_nested_objects(obj).values())


def module_arrays(weights: Mapping[str, np.ndarray], task: TaskSpec) -> list[np.ndarray]:
    """The module (or a change to it) as a list in the manifest's order: Flower's legacy `Parameters`."""
    return [np.ascontiguousarray(weights[t.name], dtype=np.float32) for t in task.trainable]


def arrays_module(arrays: list[np.ndarray], task: TaskSpec) -> ModuleWeights:
    """A list in the manifest's order read back as float32 module weights, checked against the manifest."""
    if len(arrays) != len(task.trainable):
        raise ModuleWeightsError(
            f"{len(arrays)} arrays arrived; task {task.task_id!r} has {len(task.trainable)} trainable tensors"
        )
    weights = {t.name: np.asarray(a, dtype=np.float32) for t, a in zip(task.trainable, arrays, strict=True)}
    check_module(weights, task)
    return weights
