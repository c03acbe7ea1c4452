"""Strategies are pure functions: each is checked against a naive recomputation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedyolo.fedserver.fold import WeightedSum
from fedyolo.fedserver.strategies import (
    StrategyState,
    clip_delta,
    delta_norm,
    fedadam,
    fedavg,
    fedavgm,
    module_delta,
)
from fedyolo.runtime.plan import StrategyParams, round_lr

SHAPES = {"a": (4, 3), "b": (5,)}


def modules(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]


def mean_delta(global_w: dict[str, np.ndarray], clients: list[dict[str, np.ndarray]], weights: list[float]):
    acc = WeightedSum(SHAPES)
    for c, w in zip(clients, weights, strict=True):
        acc.add(module_delta(c, global_w), w)
    return acc.mean()


def test_fedavg_is_the_example_weighted_mean_of_client_weights() -> None:
    # Prepare
    global_w, *clients = modules(4)
    examples = [10.0, 30.0, 60.0]
    # Execute
    new, state = fedavg(global_w, mean_delta(global_w, clients, examples), StrategyState(), StrategyParams())
    # Assert
    for k in SHAPES:
        total = sum(e * c[k].astype(np.float64) for e, c in zip(examples, clients, strict=True))
        naive = total / sum(examples)
        np.testing.assert_allclose(new[k], naive, rtol=1e-6, atol=1e-7)
        assert new[k].dtype == np.float32
    assert state.step == 1


def test_weighted_sum_refuses_empty_rounds_and_bad_weights() -> None:
    acc = WeightedSum(SHAPES)
    with pytest.raises(ValueError):
        acc.mean()
    with pytest.raises(ValueError):
        acc.add(modules(1)[0], 0.0)
    with pytest.raises(ValueError):
        acc.add({"a": np.zeros((4, 3))}, 1.0)


def test_fedavgm_without_momentum_is_fedavg_and_with_momentum_matches_hand_computation() -> None:
    # Prepare
    global_w, *clients = modules(3, seed=1)
    d = mean_delta(global_w, clients, [1.0, 2.0])
    params = StrategyParams(momentum=0.0)
    # Execute
    plain, _ = fedavg(global_w, d, StrategyState(), params)
    no_momentum, _ = fedavgm(global_w, d, StrategyState(), params)
    w1, s1 = fedavgm(global_w, d, StrategyState(), StrategyParams(momentum=0.5, server_lr=0.8))
    w2, s2 = fedavgm(w1, d, s1, StrategyParams(momentum=0.5, server_lr=0.8))
    # Assert
    for k in SHAPES:
        np.testing.assert_array_equal(plain[k], no_momentum[k])
        v1 = d[k]
        v2 = 0.5 * v1.astype(np.float32).astype(np.float64) + d[k]
        np.testing.assert_allclose(w1[k], global_w[k] + 0.8 * v1, rtol=1e-6)
        np.testing.assert_allclose(w2[k], w1[k] + 0.8 * v2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s2.first[k], v2, rtol=1e-6)
    assert s2.step == 2


def test_fedadam_matches_hand_computation_over_two_rounds() -> None:
    # Prepare
    global_w, *clients = modules(3, seed=2)
    p = StrategyParams(server_lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
    d = mean_delta(global_w, clients, [3.0, 1.0])
    # Execute
    w1, s1 = fedadam(global_w, d, StrategyState(), p)
    w2, s2 = fedadam(w1, d, s1, p)
    # Assert
    for k in SHAPES:
        m1, v1 = 0.1 * d[k], 0.01 * d[k] ** 2
        np.testing.assert_allclose(w1[k], global_w[k] + 0.05 * m1 / (np.sqrt(v1) + 1e-3), rtol=1e-5)
        m2 = 0.9 * m1.astype(np.float32) + 0.1 * d[k]
        v2 = 0.99 * v1.astype(np.float32) + 0.01 * d[k] ** 2
        np.testing.assert_allclose(w2[k], w1[k] + 0.05 * m2 / (np.sqrt(v2) + 1e-3), rtol=1e-5, atol=1e-6)
    assert s2.step == 2 and s2.second["a"].dtype == np.float32


def test_clip_delta_bounds_the_norm_and_keeps_the_direction() -> None:
    # Prepare
    delta = {k: np.asarray(v, dtype=np.float64) for k, v in modules(1, seed=3)[0].items()}
    norm = delta_norm(delta)
    # Execute
    clipped = clip_delta(delta, norm / 4)
    untouched = clip_delta(delta, norm * 2)
    off = clip_delta(delta, 0.0)
    # Assert
    assert delta_norm(clipped) == pytest.approx(norm / 4)
    for k in SHAPES:
        np.testing.assert_allclose(clipped[k] * 4, delta[k])
    assert untouched is delta and off is delta


def test_strategies_are_deterministic_through_float32_state() -> None:
    # The state a strategy returns is float32: the server stores it and reads it back exactly.
    global_w, *clients = modules(3, seed=4)
    d = mean_delta(global_w, clients, [1.0, 1.0])
    w_a, s_a = fedadam(global_w, d, StrategyState(), StrategyParams())
    w_b, _ = fedadam(global_w, d, StrategyState(), StrategyParams())
    assert all(np.array_equal(w_a[k], w_b[k]) for k in SHAPES)
    assert all(s_a.first[k].dtype == np.float32 for k in SHAPES)


def test_round_lr_constant_and_cosine_schedules() -> None:
    rounds = 6
    constant = [round_lr(2e-3, "constant", r, rounds) for r in range(1, rounds + 1)]
    cosine = [round_lr(4e-3, "cosine", r, rounds) for r in range(1, rounds + 2)]
    assert constant == [2e-3] * rounds
    assert cosine[0] == 4e-3 and cosine[3] == pytest.approx(2e-3)  # halfway down at round 1 + rounds/2
    assert all(a > b > 0 for a, b in itertools.pairwise(cosine[:rounds]))
    assert cosine[rounds] == cosine[rounds - 1]  # past the last round: the last round's rate
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        round_lr(1e-3, "step", 1, rounds)
    with pytest.raises(ValueError, match="at least 1"):
        round_lr(1e-3, "cosine", 0, rounds)
