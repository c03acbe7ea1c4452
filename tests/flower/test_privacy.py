"""Flower's fixed-clipping DP wrappers run around the fold, server- or client-side, on module updates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedyolo.flower.settings import FlowerRun
from fedyolo.flower.simulation import simulate_flower
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import decode_module

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_dp_run_trains_and_its_noise_reaches_the_module(
    side: str, tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    # Prepare: the same run with and without DP noise
    base = FlowerRun(
        bundle=tiny_bert_bundle,
        task="topics",
        plan=FederationPlan(rounds=1, lr=5e-3, batch_size=16),
        train_per_task=160,
        test_per_task=40,
        threads=1,
        privacy=side,
        dp_clip=0.5,
    )

    # Execute
    outs = {}
    for noise in (0.0, 1.0):
        out = tmp_path / f"noise{noise}"
        simulate_flower(
            FlowerRun.from_run_config({"out": str(out), "noise-multiplier": noise}, base), clients=4
        )
        outs[noise] = out / "topics"

    # Assert: both rounds folded four updates; the noise moved the module; both written in the wire format
    bundle = open_bundle(tiny_bert_bundle)
    task = bundle.task("topics")
    modules = {n: decode_module((o / "module.safetensors").read_bytes(), task) for n, o in outs.items()}
    for out in outs.values():
        (round1,) = json.loads((out / "history.json").read_text())["rounds"]
        assert round1["clients"] == [0, 1, 2, 3] and round1["set_aside"] == []
    before = initial_module(bundle, "topics")
    assert any(not np.array_equal(modules[0.0][k], before[k]) for k in before)
    assert any(not np.array_equal(modules[0.0][k], modules[1.0][k]) for k in before)
