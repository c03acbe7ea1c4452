"""One fold of a round's updates into the next module: the only aggregation path there is.

    fold = RoundFold(global_weights, plan, state)
    for update, examples in round:             # one update in memory at a time
        fold.add(update, examples)             # bounded: clip(update - global) * capped examples
    new_weights, new_state = fold.result()     # the plan's strategy over the aggregated delta

The server folds each accepted update while its round is still open (aggregator.py), `fedyolo simulate`
folds its simulated clients' updates, and the Flower ServerApp folds its clients' replies: the same
updates in the same order, from the same state, give bit-identical modules in all three.

Bounded influence, on by default (the plan's `adaptive_clip` and `example_cap`): an update's change is
clipped to a multiple of the median change of the task's recent updates, and its weight to a multiple of
their median example claim. Both medians come from the state carried from round to round and from the
updates folded before this one, so a restarted server that re-folds in acceptance order gets the same
bounds. While no update is known yet, the change is bounded by a multiple of the module's own norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedyolo.fedserver.strategies import STRATEGIES, Deltas, StrategyState, delta_norm
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import ModuleWeights

HISTORY = 64  # recent updates whose medians bound the next ones
MIN_HISTORY = 3  # fewer known updates than this: no median yet


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


@dataclass(frozen=True)
class Folded:
    """How one update entered the fold: its change's norm before clipping, the bound, and its weight."""

    norm: float
    clipped_to: float  # 0: not clipped
    claimed: float
    weight: float


class RoundFold:
    """The running aggregate of one round, started from the round's global module and strategy state."""

    def __init__(
        self, global_weights: ModuleWeights, plan: FederationPlan, state: StrategyState | None = None
    ) -> None:
        self.global_weights = global_weights
        self.plan = plan
        self.state = state if state is not None else StrategyState()
        self.acc = WeightedSum({name: w.shape for name, w in global_weights.items()})
        self.folded: list[Folded] = []
        self._norms = list(self.state.norms)
        self._claims = list(self.state.claims)
        self._module_norm = delta_norm(global_weights)
        self._kept: list[dict[str, np.ndarray]] = []  # the robust aggregates need every delta
        # One float64 buffer per tensor, reused by every update: the delta is computed, clipped and
        # weighted in place.
        self._delta = {name: np.empty(w.shape, dtype=np.float64) for name, w in global_weights.items()}

    def clip_bound(self) -> float:
        """The L2 bound on the next update's change (0: none)."""
        bounds = [self.plan.clip_norm] if self.plan.clip_norm > 0 else []
        if self.plan.adaptive_clip > 0:
            if len(self._norms) >= MIN_HISTORY:
                bounds.append(self.plan.adaptive_clip * float(np.median(self._norms[-HISTORY:])))
            elif self._module_norm > 0:
                bounds.append(self.plan.adaptive_clip * self._module_norm)
        return min(bounds) if bounds else 0.0

    def weight_cap(self) -> float:
        """The most the next update may weigh, whatever it claims (inf: no cap yet)."""
        if self.plan.example_cap > 0 and len(self._claims) >= MIN_HISTORY:
            return self.plan.example_cap * float(np.median(self._claims[-HISTORY:]))
        return math.inf

    def add(self, update: Mapping[str, np.ndarray], examples: float) -> Folded:
        """Fold in `weight * clip(update - global)`; `update` holds exactly the module's tensors."""
        check_weight(examples)
        if set(update) != set(self._delta):
            raise ValueError("the update's tensor names differ from the global module's")
        for name, g in self.global_weights.items():
            np.subtract(update[name], g, out=self._delta[name], dtype=np.float64)
        norm = delta_norm(self._delta)
        if not math.isfinite(norm):
            raise ValueError(f"the update's change to the module is not finite (L2 norm {norm})")
        bound = self.clip_bound()
        clipped = bound > 0 and norm > bound
        if clipped:
            for buffer in self._delta.values():
                buffer *= bound / norm
        weight = min(float(examples), self.weight_cap())
        if self.plan.aggregate == "mean":
            self.acc.add(self._delta, weight)
        else:
            self._kept.append({name: d.copy() for name, d in self._delta.items()})
        self._norms.append(norm)
        self._claims.append(float(examples))
        entry = Folded(
            norm=norm, clipped_to=bound if clipped else 0.0, claimed=float(examples), weight=weight
        )
        self.folded.append(entry)
        return entry

    @property
    def count(self) -> int:
        return len(self.folded)

    @property
    def examples(self) -> float:
        """The examples the folded updates claimed."""
        return sum(f.claimed for f in self.folded)

    @property
    def weight(self) -> float:
        """What the folded updates weigh: their claims, capped."""
        return sum(f.weight for f in self.folded)

    def delta(self) -> dict[str, np.ndarray]:
        """The round's aggregated change: the weighted mean, or the coordinate-wise median/trimmed mean."""
        if self.plan.aggregate == "mean":
            return self.acc.mean()
        if not self._kept:
            raise ValueError("no update was added; a round needs at least one")
        out = {}
        for name in self.global_weights:
            stacked = np.stack([d[name] for d in self._kept])  # [updates, *shape]
            if self.plan.aggregate == "median":
                out[name] = np.median(stacked, axis=0)
            else:
                cut = int(self.plan.trim * len(self._kept))
                ordered = np.sort(stacked, axis=0)
                out[name] = ordered[cut : len(self._kept) - cut].mean(axis=0)
        return out

    def result(self) -> tuple[ModuleWeights, StrategyState]:
        """The next global module (float32) and state; raises when no update was folded."""
        strategy = STRATEGIES[self.plan.strategy]
        weights, state = strategy(self.global_weights, self.delta(), self.state, self.plan.strategy_params)
        return weights, replace(
            state, norms=tuple(self._norms[-HISTORY:]), claims=tuple(self._claims[-HISTORY:])
        )


def is_finite(weights: ModuleWeights, state: StrategyState) -> bool:
    """Whether a fold's result can be committed: every weight and strategy moment finite."""
    arrays = [*weights.values(), *state.first.values(), *state.second.values()]
    return all(bool(np.isfinite(a).all()) for a in arrays)


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
