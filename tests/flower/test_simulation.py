"""Under Flower's simulation engine, the ClientApp and the fold-backed ServerApp give exactly the modules
`fedyolo simulate` gives: the same cohort draw, the same client streams, the same fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedyolo.flower.settings import FlowerRun
from fedyolo.flower.simulation import simulate_flower
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.plan import FederationPlan, StrategyParams
from fedyolo.runtime.wire import decode_module
from fedyolo.simulate import Cohort, run_federation
from fedyolo.tasks.shares import encode_shares, share_task


def test_flower_simulation_matches_fedyolo_simulate_bit_for_bit_and_exports_to_peft(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    # Prepare: 6 clients, half of them a round, FedAvgM with the default bounds
    plan = FederationPlan(
        rounds=2, lr=5e-3, batch_size=16, strategy="fedavgm", strategy_params=StrategyParams(momentum=0.5)
    )
    run = FlowerRun(
        bundle=tiny_bert_bundle,
        task="topics",
        plan=plan,
        fraction=0.5,
        seed=3,
        train_per_task=240,
        test_per_task=80,
        out=tmp_path / "out",
        threads=1,
    )
    bundle = open_bundle(tiny_bert_bundle)
    share = share_task("topics", 6, run.alpha, run.seed, run.train_per_task, run.test_per_task)
    clients, test = encode_shares(bundle, share)

    # Execute
    simulate_flower(run, clients=6)
    expected, records = run_federation(
        OrtTrainer(bundle, "topics", threads=1),
        initial_module(bundle, "topics"),
        clients,
        plan,
        Cohort(0.5, 3),
        test,
    )

    # Assert: the same cohorts, accuracies and final module; every round's module written
    history = json.loads((tmp_path / "out" / "topics" / "history.json").read_text())
    assert [r["clients"] for r in history["rounds"]] == [list(r.clients) for r in records]
    assert [r["accuracy"] for r in history["rounds"]] == pytest.approx([r.accuracy for r in records], abs=0)
    task = bundle.task("topics")
    got = decode_module((tmp_path / "out" / "topics" / "module.safetensors").read_bytes(), task)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    assert sorted(p.name for p in (tmp_path / "out" / "topics").glob("round-*.safetensors")) == [
        "round-0001.safetensors",
        "round-0002.safetensors",
    ]
    # and `fedyolo export peft` takes the result as it is
    from fedyolo.export.peft_export import export_peft

    peft_dir = export_peft(
        tiny_bert_bundle, "topics", tmp_path / "peft", tmp_path / "out" / "topics" / "module.safetensors"
    )
    assert (Path(peft_dir) / "adapter_model.safetensors").is_file()
