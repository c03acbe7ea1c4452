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
bounds. A task's first updates, before any median exists, are held until MIN_HISTORY of them are known and
then bounded by their own medians.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedyolo.fedserver.strategies import STRATEGIES, Deltas, StrategyState, delta_norm
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import ModuleWeights

HISTORY = 64  # recent updates whose medians bound the next ones
MIN_HISTORY = 3  # fewer known updates than this: no median yet


class WeightedSum:
    """A running sum of weighted deltas in float64: memory O(module), whatever the number of updates.

    The sum is one flat float64 array; `_sum` holds each tensor's view of it.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self.flat, self._sum = flat_views(self.shapes, np.float64)
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Deltas, weight: float) -> None:
        """Add `weight * delta`; `delta` must have exactly the accumulator's names and shapes. Laid out
        flat (one float64 temporary, the peak stays at a few module sizes), then `add_flat`."""
        check_weight(weight)
        if set(delta) != set(self._sum):
            raise ValueError("the update's tensor names differ from the accumulator's")
        flat, views = flat_views(self.shapes, np.float64)
        for name, view in views.items():
            if np.shape(delta[name]) != view.shape:
                raise ValueError(
                    f"tensor {name!r} is {np.shape(delta[name])}, the accumulator's {view.shape}"
                )
            view[...] = delta[name]
        self.add_flat(flat, weight)

    def add_flat(self, delta: np.ndarray, weight: float) -> None:
        """`add` for a delta laid out as `flat` (float64), scaled in place: two numpy calls, not two per
        tensor. Each element gets the same two operations as in `add`, so the sums are bit-identical."""
        check_weight(weight)
        np.multiply(delta, weight, out=delta)
        self.flat += delta
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean delta (float64); raises when nothing was added."""
        if self.count == 0:
            raise ValueError("no update was added; a round needs at least one")
        return {name: acc / self.total_weight for name, acc in self._sum.items()}


def flat_views(
    shapes: Mapping[str, tuple[int, ...]], dtype: type[np.floating]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One flat array for every tensor of a module, and each tensor's (reshaped) view of it, in order."""
    sizes = [math.prod(shape) for shape in shapes.values()]
    flat = np.zeros(sum(sizes), dtype=dtype)
    views, start = {}, 0
    for (name, shape), size in zip(shapes.items(), sizes, strict=True):
        views[name] = flat[start : start + size].reshape(shape)
        start += size
    return flat, views


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
        # The module's shapes, in order, are kept once: `self.acc.shapes`.
        self.acc = WeightedSum({name: w.shape for name, w in global_weights.items()})
        self.folded: list[Folded] = []
        self._norms = list(self.state.norms)
        self._claims = list(self.state.claims)
        self._kept: list[dict[str, np.ndarray]] = []  # the robust aggregates need every delta
        self._pending: list[tuple[np.ndarray, float, float]] = []  # (flat delta, norm, claim)
        # One flat float64 buffer reused by every update (each tensor a view of it): the delta is computed,
        # clipped and weighted in place, a numpy call per step for the whole module where it can be. Each
        # numpy call lets go of the GIL and must win it back: under load the aggregator waited for it.
        self._delta_flat, self._delta = flat_views(self.acc.shapes, np.float64)

    def bounds(self) -> tuple[float, float]:
        """(L2 bound on an update's change, cap on its weight) from the known updates; 0 and inf: none."""
        clip = [self.plan.clip_norm] if self.plan.clip_norm > 0 else []
        cap = math.inf
        # statistics.median, not np.median: on 64 floats numpy's overhead was ~5% of the server's CPU.
        if self._norms and self.plan.adaptive_clip > 0:
            clip.append(self.plan.adaptive_clip * statistics.median(self._norms[-HISTORY:]))
        if self._claims and self.plan.example_cap > 0:
            cap = self.plan.example_cap * statistics.median(self._claims[-HISTORY:])
        return (min(clip) if clip else 0.0), cap

    def add(self, update: Mapping[str, np.ndarray], examples: float) -> None:
        """Fold in `weight * clip(update - global)`; `update` holds exactly the module's tensors.

        While fewer than MIN_HISTORY updates of the task are known (its first round), updates are held
        (at most MIN_HISTORY of them) and folded once their own medians can bound them.
        """
        check_weight(examples)
        if set(update) != set(self._delta):
            raise ValueError("the update's tensor names differ from the global module's")
        for name, g in self.global_weights.items():
            np.subtract(update[name], g, out=self._delta[name], dtype=np.float64)
        norm = delta_norm(self._delta)
        if not math.isfinite(norm):
            raise ValueError(f"the update's change to the module is not finite (L2 norm {norm})")
        if len(self._norms) >= MIN_HISTORY:
            self._fold(self._delta_flat, norm, float(examples), self.bounds())  # bounded by those before it
        else:
            self._pending.append((self._delta_flat.copy(), norm, float(examples)))
        self._norms.append(norm)
        self._claims.append(float(examples))
        if self._pending and len(self._norms) >= MIN_HISTORY:
            self._flush()

    def _flush(self) -> None:
        bounds = self.bounds()
        for delta, norm, examples in self._pending:
            self._fold(delta, norm, examples, bounds)
        self._pending.clear()

    def _fold(self, delta: np.ndarray, norm: float, examples: float, bounds: tuple[float, float]) -> None:
        """Fold one flat delta (laid out as `_delta_flat`, scaled in place)."""
        bound, cap = bounds
        clipped = bound > 0 and norm > bound
        if clipped:
            delta *= bound / norm
        weight = min(examples, cap)
        if self.plan.aggregate == "mean":
            self.acc.add_flat(delta, weight)
        else:
            kept, views = flat_views(self.acc.shapes, np.float64)
            kept[:] = delta
            self._kept.append(views)
        self.folded.append(
            Folded(norm=norm, clipped_to=bound if clipped else 0.0, claimed=examples, weight=weight)
        )

    @property
    def count(self) -> int:
        """Updates added, folded or held."""
        return len(self.folded) + len(self._pending)

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
        self._flush()
        return apply_delta(
            self.global_weights, self.delta(), self.plan, self.state, self._norms, self._claims
        )


def apply_delta(
    global_weights: ModuleWeights,
    delta: Mapping[str, np.ndarray],
    plan: FederationPlan,
    state: StrategyState,
    norms: Iterable[float],
    claims: Iterable[float],
) -> tuple[ModuleWeights, StrategyState]:
    """The plan's strategy over a round's aggregated change; the state keeps the latest norms and claims.

    `RoundFold.result` ends here; so does a securely aggregated round (fedyolo.flower.secure), whose
    server sees only the weighted mean of the clients' changes, never one of them.
    """
    strategy = STRATEGIES[plan.strategy]
    weights, new_state = strategy(global_weights, delta, state, plan.strategy_params)
    return weights, replace(
        new_state, norms=tuple(list(norms)[-HISTORY:]), claims=tuple(list(claims)[-HISTORY:])
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
