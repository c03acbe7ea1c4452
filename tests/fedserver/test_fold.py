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
        strategy=strategy,
        clip_norm=clip_norm,
        adaptive_clip=0.0,
        example_cap=0.0,
        strategy_params=StrategyParams(momentum=0.5),
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
    plan = FederationPlan(clip_norm=1.0, adaptive_clip=0.0)
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


def honest(global_w: dict[str, np.ndarray], seed: int, size: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: v + (size * rng.standard_normal(v.shape)).astype(np.float32) for k, v in global_w.items()}


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in SHAPES)))


def test_by_default_one_client_can_move_the_module_no_further_than_a_few_honest_ones() -> None:
    # Prepare: a first round of honest updates gives the fold its history
    (global_w,) = modules(1, seed=5)
    plan = FederationPlan()  # the defaults: adaptive clipping and the example cap are on
    w1, s1 = fold_round(global_w, [(honest(global_w, s), 100) for s in range(4)], plan)
    # Execute: three honest clients and one that claims 10^6 examples and moves the module 10^4 further
    attack = {k: v + 1e4 for k, v in w1.items()}
    fold = RoundFold(w1, plan, s1)
    for s in range(3):
        fold.add(honest(w1, 10 + s), 100)
    fold.add(attack, 1_000_000)
    w2, _ = fold.result()
    bad = fold.folded[-1]
    # Assert: its weight is capped near the others' and its change clipped near theirs
    honest_norms = [f.norm for f in fold.folded[:3]]
    assert bad.weight == 4 * 100 and 0 < bad.clipped_to <= 3 * max(honest_norms)
    assert distance(w2, w1) / distance(attack, w1) < 1e-3
    # without the bounds the same client takes the module almost all the way
    off = FederationPlan(adaptive_clip=0.0, example_cap=0.0)
    w_off, _ = fold_round(w1, [*[(honest(w1, 10 + s), 100) for s in range(3)], (attack, 1_000_000)], off)
    assert distance(w_off, w1) / distance(attack, w1) > 0.99


def test_a_tasks_first_updates_are_held_and_bounded_by_their_own_medians() -> None:
    # The attacker uploads first, before anything is known of the task's updates.
    (global_w,) = modules(1, seed=6)
    fold = RoundFold(global_w, FederationPlan(adaptive_clip=2.0, example_cap=4.0))
    fold.add({k: v + 1e3 for k, v in global_w.items()}, 1_000_000)
    assert fold.folded == [] and fold.count == 1  # held: no median yet
    fold.add(honest(global_w, 1), 10)
    fold.add(honest(global_w, 2), 20)
    first = fold.folded[0]
    assert first.weight == 4 * 20  # 4x the median claim of the three
    assert first.clipped_to == pytest.approx(2.0 * sorted(f.norm for f in fold.folded)[1])


def test_the_bounds_history_travels_in_the_state_so_a_second_round_continues_it() -> None:
    (global_w,) = modules(1, seed=7)
    plan = FederationPlan()
    _, state = fold_round(global_w, [(honest(global_w, s), 10 + s) for s in range(5)], plan)
    assert len(state.norms) == 5 and state.claims == (10, 11, 12, 13, 14)
    assert RoundFold(global_w, plan, state).bounds()[1] == 4 * 12


@pytest.mark.parametrize("aggregate", ["median", "trimmed_mean"])
def test_robust_aggregates_ignore_one_outlier(aggregate: str) -> None:
    (global_w,) = modules(1, seed=8)
    plan = FederationPlan(aggregate=aggregate, trim=0.2, adaptive_clip=0.0, example_cap=0.0)
    updates = [(honest(global_w, s, size=0.01), 10) for s in range(4)]
    outlier = ({k: v + 100.0 for k, v in global_w.items()}, 10)
    new, _ = fold_round(global_w, [*updates, outlier], plan)
    for k in SHAPES:
        assert np.abs(new[k] - global_w[k]).max() < 0.1
    mean, _ = fold_round(global_w, [*updates, outlier], FederationPlan(adaptive_clip=0.0, example_cap=0.0))
    assert np.abs(mean["a"] - global_w["a"]).min() > 10
