"""FedProx's proximal term, on the client (Li et al., 2020, "Federated Optimization in Heterogeneous
Networks"): local training minimises `loss(w) + mu/2 * ||w - w_global||^2`.

The term's gradient is `mu * (w - w_global)`, so after each optimiser step a trainer applies::

    w <- w - lr * mu * (w - w_global)

which pulls the module back towards the round's global module and bounds client drift on skewed
data. `mu = 0` is plain FedAvg. A trainer that can apply it inside its own step implements
`ProximalTrainer`; for any other `Trainer` the client applies `proximal_step` through
`get_module()`/`set_module()`, which also resets the trainer's optimiser state (harmless for SGD,
not for Adam: implement `set_proximal` there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.wire import ModuleWeights, check_module


def proximal_step(
    weights: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray], lr: float, mu: float
) -> ModuleWeights:
    """`w - lr * mu * (w - w_global)` per tensor, in the weights' dtype; `mu = 0` returns a copy."""
    if mu < 0 or lr < 0:
        raise ValueError(f"lr and mu must not be negative, got lr={lr}, mu={mu}")
    pull = lr * mu
    return {
        name: (w - pull * (w - global_weights[name])).astype(w.dtype, copy=False)
        for name, w in weights.items()
    }


def proximal_target(
    global_weights: ModuleWeights, mu: float, task: TaskSpec
) -> tuple[ModuleWeights, float] | None:
    """What a trainer's `set_proximal` keeps: a float32 copy of the checked global module and `mu`, or
    None when `mu` is 0 (no pull); a negative `mu` is a ValueError."""
    if mu < 0:
        raise ValueError(f"proximal mu must not be negative, got {mu}")
    check_module(global_weights, task)
    if mu == 0:
        return None
    return {t.name: np.array(global_weights[t.name], np.float32) for t in task.trainable}, mu


@runtime_checkable
class ProximalTrainer(Protocol):
    """A trainer that adds the proximal term itself, after each of its optimiser steps."""

    def set_proximal(self, global_weights: ModuleWeights, mu: float) -> None:
        """Pull towards `global_weights` with strength `mu` from now on (`mu = 0` turns it off).

        Call it after `set_module`, which starts a round and may drop the last round's pull.
        """
        ...
