"""`python -m fedyolo.fedserver` takes the round plan's options from the plan itself (declared once)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from fedyolo.fedserver.__main__ import add_plan_options
from fedyolo.runtime.plan import FederationPlan, StrategyParams


def test_every_plan_field_is_an_option_and_makes_the_same_plan() -> None:
    p = argparse.ArgumentParser()
    add_plan_options(p)
    args = vars(
        p.parse_args(
            [
                "--rounds",
                "7",
                "--lr",
                "4e-3",
                "--lr-schedule",
                "cosine",
                "--strategy",
                "fedavgm",
                "--server-momentum",
                "0.5",
                "--adaptive-clip",
                "0",
                "--aggregate",
                "median",
                "--clip-norm",
                "2.5",
            ]
        )
    )
    plan = FederationPlan.from_options(args)
    assert plan == FederationPlan(
        rounds=7,
        lr=4e-3,
        lr_schedule="cosine",
        strategy="fedavgm",
        strategy_params=StrategyParams(momentum=0.5),
        adaptive_clip=0.0,
        aggregate="median",
        clip_norm=2.5,
    )
    assert {f.name for f in fields(FederationPlan)} - {"strategy_params"} <= set(a.dest for a in p._actions)


def test_a_plan_that_cannot_run_is_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedyolo.fedserver", str(tmp_path), "--strategy", "krum"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: unknown strategy 'krum'; choose one of fedavg, fedavgm, fedadam"
    ]
