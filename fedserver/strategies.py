"""Aggregation strategies: pure functions over numpy arrays, tested alone.

A strategy is the server's step over a round's mean client delta::

    new_weights, new_state = STRATEGIES[name](global_weights, mean_delta, state, params)

`fold.RoundFold` computes that mean (clipped, example-weighted, streaming) and calls the strategy: the
server, `fedyolo simulate` and the Flower ServerApp all fold rounds through it.

Deltas are `client weights - global weights` (the negative pseudo-gradient of Reddi et al., 2021,
"Adaptive Federated Optimization"). Sums run in float64; weights and state come back as float32, so a
state stored to disk and read back gives the same next round as one kept in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedyolo.runtime.plan import StrategyParams
from fedyolo.runtime.wire import ModuleWeights

Deltas = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class StrategyState:
    """What the server carries from round to round: FedAvgM's velocity, FedAdam's moments, and the
    recent updates' delta norms and example claims whose medians bound the next updates (fold.py)."""

    step: int = 0
    first: Mapping[str, np.ndarray] = field(default_factory=dict)
    second: Mapping[str, np.ndarray] = field(default_factory=dict)
    norms: tuple[float, ...] = ()
    claims: tuple[float, ...] = ()


def module_delta(update: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray]) -> ModuleWeights:
    """`update - global_weights` per tensor, in float64."""
    return {name: np.subtract(update[name], g, dtype=np.float64) for name, g in global_weights.items()}


def delta_norm(delta: Deltas) -> float:
    """L2 norm over every tensor of the module, as one vector.

    `einsum` and not `np.dot`: dot is a BLAS call, and OpenBLAS's threads spin after each one. In the
    server (an upload's norm is taken as it is folded) that spinning cost 5 ms of CPU per upload on 2
    cores, more than everything else an upload costs (benchmarks/server_load.py).
    """
    return math.sqrt(sum(float(np.einsum("i,i->", d.ravel(), d.ravel())) for d in delta.values()))


def clip_delta(delta: Deltas, clip_norm: float) -> Deltas:
    """Scale `delta` down to L2 norm `clip_norm` when it is longer; `clip_norm` 0 turns clipping off.

    The fold (fold.py) clips in place in its own buffers; this is the same rule as a pure function, the
    oracle its tests compare with.
    """
    if clip_norm <= 0:
        return delta
    norm = delta_norm(delta)
    if norm <= clip_norm:
        return delta
    scale = clip_norm / norm
    return {name: d * scale for name, d in delta.items()}


def _f32(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with np.errstate(over="ignore"):  # an overflow is caught by the fold (fold.is_finite), never committed
        return {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()}


def fedavg(
    global_weights: Mapping[str, np.ndarray], mean_delta: Deltas, state: StrategyState, params: StrategyParams
) -> tuple[ModuleWeights, StrategyState]:
    """FedAvg (McMahan et al., 2017): w + lr * mean delta; lr 1 is the example-weighted client mean."""
    lr = 1.0 if params.server_lr is None else params.server_lr
    new = {name: g.astype(np.float64) + lr * mean_delta[name] for name, g in global_weights.items()}
    return _f32(new), StrategyState(step=state.step + 1)


def fedavgm(
    global_weights: Mapping[str, np.ndarray], mean_delta: Deltas, state: StrategyState, params: StrategyParams
) -> tuple[ModuleWeights, StrategyState]:
    """FedAvgM (Hsu et al., 2019): v = momentum * v + mean delta; w = w + lr * v."""
    lr = 1.0 if params.server_lr is None else params.server_lr
    velocity = {}
    new = {}
    for name, g in global_weights.items():
        v = params.momentum * state.first[name].astype(np.float64) if state.first else 0.0
        velocity[name] = v + mean_delta[name]
        new[name] = g.astype(np.float64) + lr * velocity[name]
    return _f32(new), StrategyState(step=state.step + 1, first=_f32(velocity))


def fedadam(
    global_weights: Mapping[str, np.ndarray], mean_delta: Deltas, state: StrategyState, params: StrategyParams
) -> tuple[ModuleWeights, StrategyState]:
    """FedAdam (Reddi et al., 2021): Adam moments of the mean delta; w = w + lr * m / (sqrt(v) + tau)."""
    lr = 0.01 if params.server_lr is None else params.server_lr
    first, second, new = {}, {}, {}
    for name, g in global_weights.items():
        d = mean_delta[name]
        m = params.beta1 * state.first[name].astype(np.float64) if state.first else 0.0
        v = params.beta2 * state.second[name].astype(np.float64) if state.second else 0.0
        first[name] = m + (1.0 - params.beta1) * d
        second[name] = v + (1.0 - params.beta2) * d * d
        new[name] = g.astype(np.float64) + lr * first[name] / (np.sqrt(second[name]) + params.tau)
    return _f32(new), StrategyState(step=state.step + 1, first=_f32(first), second=_f32(second))


Strategy = Callable[
    [Mapping[str, np.ndarray], Deltas, StrategyState, StrategyParams], tuple[ModuleWeights, StrategyState]
]
STRATEGIES: dict[str, Strategy] = {"fedavg": fedavg, "fedavgm": fedavgm, "fedadam": fedadam}
