"""Modules travel as ArrayRecords of the manifest's tensors only, and read back as the wire format reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedyolo.flower.records import config_plan, module_record, plan_config, record_module, wire_bytes
from fedyolo.flower.settings import FlowerRun
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.errors import FedyoloError, ModuleWeightsError
from fedyolo.runtime.plan import FederationPlan, PlanError
from fedyolo.runtime.wire import encode_module


def test_module_record_round_trips_and_holds_only_the_module(tiny_bert_bundle: Path) -> None:
    # Prepare
    bundle = open_bundle(tiny_bert_bundle)
    task = bundle.task("topics")
    weights = initial_module(bundle, "topics")

    # Execute
    record = module_record(weights, task)
    back = record_module(record, task)

    # Assert: the manifest's names, nothing of the backbone, values unchanged, bytes near safetensors'
    assert list(record) == [t.name for t in task.trainable]
    assert not set(record) & {t.name for t in bundle.manifest.backbone.tensors}
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    assert wire_bytes(record) < 1.2 * len(encode_module(weights, task)) + 4096


def test_a_record_that_is_not_the_module_is_refused(tiny_bert_bundle: Path) -> None:
    bundle = open_bundle(tiny_bert_bundle)
    task = bundle.task("topics")
    weights = initial_module(bundle, "topics")
    name = task.trainable[0].name
    record = module_record(weights, task)
    del record[name]
    with pytest.raises(ModuleWeightsError, match="missing"):
        record_module(record, task)
    bad = dict(weights)
    bad[name] = np.full_like(weights[name], np.nan)
    with pytest.raises(ModuleWeightsError, match="NaN"):
        module_record(bad, task)


def test_the_round_plan_travels_in_the_config_record() -> None:
    plan = FederationPlan(rounds=4, lr=4e-3, lr_schedule="cosine", proximal_mu=0.01).for_round(3)
    config = plan_config(plan, "topics", seed=7)
    assert config_plan(config) == plan
    assert config["seed"] == 7 and config["task"] == "topics"
    config["lr"] = "fast"
    with pytest.raises(PlanError):
        config_plan(config)


def test_run_config_keys_set_the_plan_and_unknown_keys_are_refused() -> None:
    run = FlowerRun.from_run_config(
        {"rounds": 3, "lr": 1, "server-lr": 0, "server-momentum": 0.5, "fraction": 0.1}
    )
    assert run.plan.rounds == 3 and run.plan.lr == 1.0 and run.fraction == 0.1
    assert run.plan.strategy_params.server_lr is None and run.plan.strategy_params.momentum == 0.5
    assert FlowerRun.from_run_config(run.to_run_config()) == run
    with pytest.raises(FedyoloError, match="unknown run config keys"):
        FlowerRun.from_run_config({"round": 3})
