"""FedProx: the proximal step itself; the client's fallback through `set_module` for a plain trainer; and
the pull inside `OrtTrainer.step`, which keeps AdamW's moments (the fallback reset them after every step)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.client import train_round
from fedyolo.runtime.fedprox import ProximalTrainer, proximal_step
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.manifest import MODULE_WEIGHTS
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.plan import RoundPlan
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.runtime.wire import ModuleWeights, decode_module
from fedyolo.tasks import load_task

from .conftest import SoftmaxTrainer, make_data

ROUND = RoundPlan(round=1, batch_size=16, local_epochs=2, lr=5e-3)


@pytest.fixture(scope="module")
def bundle(tiny_bert_bundle: Path) -> Bundle:
    return open_bundle(tiny_bert_bundle)


@pytest.fixture(scope="module")
def data(bundle: Bundle) -> ExampleArrays:
    return encode_examples(bundle, bundle.task("topics"), load_task("topics").train[:48])


def initial(bundle: Bundle) -> ModuleWeights:
    return decode_module(bundle.task_file("topics", MODULE_WEIGHTS).read_bytes(), bundle.task("topics"))


def trained(trainer: OrtTrainer, data: ExampleArrays, mu: float) -> ModuleWeights:
    """The module after one round of `ROUND` with FedProx's `mu`, from the bundle's initial module."""
    train_round(
        trainer, initial(trainer.bundle), data, replace(ROUND, proximal_mu=mu), np.random.default_rng(0)
    )
    return trainer.get_module()


def distance(a: ModuleWeights, b: ModuleWeights) -> float:
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_proximal_step_pulls_towards_the_global_module() -> None:
    w = {"a": np.array([1.0, -2.0], dtype=np.float32)}
    g = {"a": np.array([0.0, 0.0], dtype=np.float32)}
    out = proximal_step(w, g, lr=0.5, mu=0.2)
    np.testing.assert_allclose(out["a"], [0.9, -1.8])
    assert out["a"].dtype == np.float32
    np.testing.assert_array_equal(proximal_step(w, g, lr=0.5, mu=0.0)["a"], w["a"])
    with pytest.raises(ValueError):
        proximal_step(w, g, lr=0.5, mu=-1.0)


def test_fedprox_keeps_local_training_closer_to_the_global_module(bundle_dir: Path) -> None:
    # Prepare: a trainer without `set_proximal`, pulled by the client through `set_module`
    bundle = open_bundle(bundle_dir)
    task = bundle.task("topics")
    start = decode_module((bundle_dir / "tasks/topics/module.safetensors").read_bytes(), task)
    data = make_data(64, seed=3, label_probs=np.array([0.9, 0.1, 0, 0, 0]))
    plan = RoundPlan(round=1, batch_size=16, local_epochs=3, lr=0.5)
    drift = {}
    for mu in (0.0, 1.0):
        trainer = SoftmaxTrainer(bundle, "topics")
        # Execute
        train_round(trainer, start, data, replace(plan, proximal_mu=mu), np.random.default_rng(0))
        drift[mu] = distance(trainer.get_module(), start)
    # Assert
    assert drift[1.0] < 0.8 * drift[0.0]


def test_the_ort_trainer_applies_fedprox_itself(bundle: Bundle) -> None:
    assert isinstance(OrtTrainer(bundle, "topics", threads=1), ProximalTrainer)


def test_a_negligible_mu_trains_like_plain_fedavg(bundle: Bundle, data: ExampleArrays) -> None:
    # Prepare
    trainer = OrtTrainer(bundle, "topics", threads=1)

    # Execute
    plain = trained(trainer, data, 0.0)
    proximal = trained(trainer, data, 1e-9)

    # Assert: AdamW's moments survive the pull (reset after each step, the module would differ by ~lr)
    assert distance(plain, initial(bundle)) > 1e-2
    for name in plain:
        np.testing.assert_allclose(proximal[name], plain[name], rtol=0, atol=1e-6)


def test_a_large_mu_keeps_the_module_near_the_global_one(bundle: Bundle, data: ExampleArrays) -> None:
    # Prepare
    trainer = OrtTrainer(bundle, "topics", threads=1)
    start = initial(bundle)

    # Execute
    drift = {mu: distance(trained(trainer, data, mu), start) for mu in (0.0, 50.0)}

    # Assert
    assert drift[50.0] < 0.5 * drift[0.0]


def test_a_new_round_drops_the_last_rounds_pull(bundle: Bundle, data: ExampleArrays) -> None:
    # Prepare: a trainer left pulling hard towards some other module
    fresh = OrtTrainer(bundle, "topics", threads=1)
    reused = OrtTrainer(bundle, "topics", threads=1)
    elsewhere = {name: w + 1.0 for name, w in initial(bundle).items()}
    reused.set_proximal(elsewhere, 50.0)

    # Execute: set_module starts a round; training without FedProx must not pull towards `elsewhere`
    for trainer in (fresh, reused):
        trainer.set_module(initial(bundle))
        trainer.set_learning_rate(ROUND.lr)
        for start in range(0, 48, 16):
            trainer.step({name: array[start : start + 16] for name, array in data.items()})

    # Assert
    a, b = fresh.get_module(), reused.get_module()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
