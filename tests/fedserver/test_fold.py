"""`RoundFold` is the one aggregation path: checked against the strategies composed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedyolo.fedserver.fold import RoundFold, WeightedSum, fold_round
from fedyolo.fedserver.strategies import STRATEGIES, StrategyState, clip_delta, module_delta
from fedyolo.runtime.plan import STRATEGY_NAMES, FederationPlan, StrategyParams

SHAPES = {"a": (4, 3), "b": (5,)}


def modules(n: int, seed: int = 0, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)
    ]


def by_hand(
    global_w: dict[str, np.ndarray],
    updates: list[dict[str, np.ndarray]],
    examples: list[int],
    plan: FederationPlan,
    state: StrategyState,
) -> tuple[dict[str, np.ndarray], StrategyState]:
    acc = WeightedSum(SHAPES)
    for u, n in zip(updates, examples, strict=True):
        acc.add(clip_delta(module_delta(u, global_w), plan.clip_norm), n)
    return STRATEGIES[plan.strategy](global_w, acc.mean(), state, plan.strategy_params)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("clip_norm", [0.0, 0.5])
def test_the_fold_is_bitwise_the_strategy_over_clipped_weighted_deltas(
    strategy: str, clip_norm: float
) -> None:
    # Prepare: two rounds, so FedAvgM's velocity and FedAdam's moments carry over
    plan = FederationPlan(
        strategy=strategy, clip_norm=clip_norm, strategy_params=StrategyParams(momentum=0.5)
    )
    global_w, *updates = modules(4, seed=1)
    examples = [7, 30, 2]
    # Execute
    w1, s1 = fold_round(global_w, zip(updates, examples, strict=True), plan)
    w2, s2 = fold_round(w1, zip(reversed(updates), examples, strict=True), plan, s1)
    # Assert
    h1, hs1 = by_hand(global_w, updates, examples, plan, StrategyState())
    h2, _ = by_hand(h1, list(reversed(updates)), examples, plan, hs1)
    for k in SHAPES:
        np.testing.assert_array_equal(w1[k], h1[k])
        np.testing.assert_array_equal(w2[k], h2[k])
        assert w2[k].dtype == np.float32
    assert s2.step == 2


def test_clipping_bounds_each_update_whatever_its_weight() -> None:
    global_w, near, far = modules(3, seed=2)
    far = {k: v + 1e6 for k, v in far.items()}
    plan = FederationPlan(clip_norm=1.0)
    fold = RoundFold(global_w, plan)
    fold.add(near, 1)
    fold.add(far, 1)
    new, _ = fold.result()
    change = np.sqrt(sum(float(((new[k].astype(np.float64) - global_w[k]) ** 2).sum()) for k in SHAPES))
    assert change <= 1.0 + 1e-6


def test_the_fold_refuses_bad_weights_other_tensors_and_empty_rounds() -> None:
    global_w, update = modules(2)
    fold = RoundFold(global_w, FederationPlan())
    with pytest.raises(ValueError, match="no update"):
        fold.result()
    for weight in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive and finite"):
            fold.add(update, weight)
    with pytest.raises(ValueError, match="tensor names"):
        fold.add({"a": update["a"]}, 1)
    assert fold.count == 0


def test_the_plan_names_exactly_the_strategies_the_server_implements() -> None:
    assert tuple(STRATEGIES) == STRATEGY_NAMES
