"""One fold of a round's updates into the next module: the only aggregation path there is.

    fold = RoundFold(global_weights, plan, state)
    for update, examples in round:             # one update in memory at a time
        fold.add(update, examples)             # clip(update - global) * examples, summed in float64
    new_weights, new_state = fold.result()     # the plan's strategy over the weighted mean delta

The server folds each accepted update while its round is still open (aggregator.py), `fedyolo simulate`
folds its simulated clients' updates, and the Flower ServerApp folds its clients' replies: the same
updates in the same order give bit-identical modules in all three.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from fedyolo.fedserver.strategies import STRATEGIES, Deltas, StrategyState, clip_scale
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import ModuleWeights


class WeightedSum:
    """A running sum of weighted deltas in float64: memory O(module), whatever the number of updates."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self._sum = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Deltas, weight: float) -> None:
        """Add `weight * delta`; `delta` must have exactly the accumulator's names and shapes."""
        check_weight(weight)
        if set(delta) != set(self._sum):
            raise ValueError("the update's tensor names differ from the accumulator's")
        for name, acc in self._sum.items():
            # In place, one float64 temporary: the peak stays at a few module sizes.
            acc += np.multiply(delta[name], weight, dtype=np.float64)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean delta (float64); raises when nothing was added."""
        if self.count == 0:
            raise ValueError("no update was added; a round needs at least one")
        return {name: acc / self.total_weight for name, acc in self._sum.items()}


def check_weight(weight: float) -> None:
    if not weight > 0 or not math.isfinite(weight):
        raise ValueError(f"an update's weight must be positive and finite, got {weight}")


class RoundFold:
    """The running aggregate of one round, started from the round's global module and strategy state."""

    def __init__(
        self, global_weights: ModuleWeights, plan: FederationPlan, state: StrategyState | None = None
    ) -> None:
        self.global_weights = global_weights
        self.plan = plan
        self.state = state if state is not None else StrategyState()
        self.acc = WeightedSum({name: w.shape for name, w in global_weights.items()})
        # One float64 buffer per tensor, reused by every update: the delta is computed, clipped and
        # weighted in place.
        self._delta = {name: np.empty(w.shape, dtype=np.float64) for name, w in global_weights.items()}

    def add(self, update: Mapping[str, np.ndarray], examples: float) -> None:
        """Fold in `examples * clip(update - global)`; `update` holds exactly the module's tensors."""
        check_weight(examples)
        if set(update) != set(self._delta):
            raise ValueError("the update's tensor names differ from the global module's")
        for name, g in self.global_weights.items():
            np.subtract(update[name], g, out=self._delta[name], dtype=np.float64)
        scale = clip_scale(self._delta, self.plan.clip_norm)
        if scale != 1.0:
            for buffer in self._delta.values():
                buffer *= scale
        self.acc.add(self._delta, examples)

    @property
    def count(self) -> int:
        return self.acc.count

    @property
    def examples(self) -> float:
        return self.acc.total_weight

    def result(self) -> tuple[ModuleWeights, StrategyState]:
        """The next global module (float32) and strategy state; raises when no update was folded."""
        strategy = STRATEGIES[self.plan.strategy]
        return strategy(self.global_weights, self.acc.mean(), self.state, self.plan.strategy_params)


def fold_round(
    global_weights: ModuleWeights,
    updates: Iterable[tuple[Mapping[str, np.ndarray], float]],
    plan: FederationPlan,
    state: StrategyState | None = None,
) -> tuple[ModuleWeights, StrategyState]:
    """Fold a whole round at once: (update, examples) pairs in acceptance order."""
    fold = RoundFold(global_weights, plan, state)
    for update, examples in updates:
        fold.add(update, examples)
    return fold.result()
