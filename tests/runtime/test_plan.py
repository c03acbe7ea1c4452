"""The round plan: one typed settings object; its JSON form is what a server sends and a client checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedyolo.runtime.plan import FederationPlan, PlanError, RoundPlan, StrategyParams, round_lr


def test_for_round_schedules_the_lr_and_carries_the_client_settings() -> None:
    plan = FederationPlan(
        rounds=4, local_epochs=2, lr=4e-3, lr_schedule="cosine", batch_size=16, proximal_mu=0.1
    )
    rounds = [plan.for_round(r) for r in (1, 2, 3, 4)]
    assert [r.lr for r in rounds] == [round_lr(4e-3, "cosine", r, 4) for r in (1, 2, 3, 4)]
    assert {(r.local_epochs, r.batch_size, r.proximal_mu) for r in rounds} == {(2, 16, 0.1)}
    assert [r.round for r in rounds] == [1, 2, 3, 4]


def test_a_round_plan_survives_its_json_form() -> None:
    plan = FederationPlan(rounds=3, lr=2e-3, proximal_mu=0.01).for_round(2)
    # the server sends it flat beside the round's status; the client ignores what is not the plan
    body = json.loads(json.dumps(plan.to_json() | {"status": "open", "task_id": "topics"}))
    assert RoundPlan.from_json(body) == plan


def test_a_federation_plan_survives_its_json_form() -> None:
    plan = FederationPlan(
        rounds=7, strategy="fedadam", clip_norm=0.5, strategy_params=StrategyParams(server_lr=0.02, tau=1e-2)
    )
    assert FederationPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": "8"}, "batch_size='8'; expected a number"),
        ({"local_epochs": 1.5}, "local_epochs=1.5; expected an integer"),
        ({"local_epochs": True}, "expected a number"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"lr": float("nan")}, "lr must be positive"),
        ({"batch_size": 0}, "must be at least 1"),
        ({"proximal_mu": -0.1}, "proximal_mu must be finite and not negative"),
        ({"lr": None}, "lr=None; expected a number"),
    ],
)
def test_a_broken_servers_round_plan_is_a_clear_error(change: dict[str, Any], message: str) -> None:
    body = FederationPlan().for_round(1).to_json() | change
    with pytest.raises(PlanError, match=message):
        RoundPlan.from_json(body)


def test_a_missing_setting_names_it() -> None:
    body = FederationPlan().for_round(1).to_json()
    del body["lr"]
    with pytest.raises(PlanError, match="no 'lr'"):
        RoundPlan.from_json(body)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "krum"}, "unknown strategy 'krum'"),
        ({"lr_schedule": "step"}, "unknown lr schedule 'step'"),
        ({"rounds": 0}, "at least 1"),
        ({"clip_norm": -1.0}, "must not be negative"),
    ],
)
def test_a_plan_that_cannot_run_is_refused_when_made(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        FederationPlan(**settings)
