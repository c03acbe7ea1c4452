"""Flower's secure aggregation (SecAgg+) over module changes: the server sees only the round's mean change,
and the module it commits equals the clear fold's up to SecAgg+'s quantisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedyolo.flower.settings import FlowerRun
from fedyolo.flower.simulation import simulate_flower
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import decode_module

pytestmark = pytest.mark.slow


def test_a_secure_round_commits_the_clear_folds_module_up_to_quantisation(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    # Prepare: the same two rounds of four clients in clear and under SecAgg+; fixed bounds, so that a
    # client clipping itself is the same rule as the server clipping it
    plan = FederationPlan(rounds=2, lr=5e-3, batch_size=16, adaptive_clip=0, example_cap=0, clip_norm=0.5)
    base = FlowerRun(
        bundle=tiny_bert_bundle, task="topics", plan=plan, train_per_task=160, test_per_task=40, threads=1
    )

    # Execute
    outs = {}
    for privacy in ("none", "secagg"):
        out = tmp_path / privacy
        simulate_flower(FlowerRun.from_run_config({"out": str(out), "privacy": privacy}, base), clients=4)
        outs[privacy] = out / "topics"

    # Assert: every round folded all four clients; the module moved; secure == clear to ~1e-5
    task = open_bundle(tiny_bert_bundle).task("topics")
    modules = {p: decode_module((o / "module.safetensors").read_bytes(), task) for p, o in outs.items()}
    history = json.loads((outs["secagg"] / "history.json").read_text())["rounds"]
    assert [r["clients"] for r in history] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert all(r["set_aside"] == [] for r in history) and history[-1]["accuracy"] is not None
    before = initial_module(open_bundle(tiny_bert_bundle), "topics")
    moved = max(float(np.abs(modules["secagg"][k] - before[k]).max()) for k in before)
    gap = max(float(np.abs(modules["secagg"][k] - modules["none"][k]).max()) for k in before)
    assert moved > 1e-3
    # not 0: the secure module went through SecAgg+'s quantisation, so the clear fold never saw an update
    assert 0 < gap < 1e-4, f"secure and clear modules differ by {gap} (moved {moved})"
    print(f"moved {moved:.3g}, secure - clear {gap:.3g}")
    assert (outs["secagg"] / "round-0002.safetensors").exists()


def test_a_robust_aggregate_is_refused_under_secure_aggregation() -> None:
    with pytest.raises(FedyoloError, match="aggregate=mean"):
        FlowerRun(privacy="secagg", plan=FederationPlan(aggregate="median"))
