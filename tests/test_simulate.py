"""`fedyolo.simulate` is the real client's training and the server's aggregation in one process: a round
with two clients gives exactly the FedAvg of what each client, run alone, would have uploaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedyolo.fedserver.fold import WeightedSum
from fedyolo.fedserver.strategies import StrategyState, fedavg, module_delta
from fedyolo.runtime.bundle import Bundle, initial_module, open_bundle
from fedyolo.runtime.client import train_round
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.plan import FederationPlan, StrategyParams, round_lr
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.runtime.wire import encode_module
from fedyolo.simulate import Cohort, run_federation, sample_clients
from fedyolo.tasks import load_task


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from fedyolo.export.pipeline import export_onnx

    out = tmp_path_factory.mktemp("simulate") / "bundle"
    labels = load_task("topics").labels
    export_onnx(out, "topics", labels, backbone="tiny-bert", max_length=16, show_progress=False)
    return open_bundle(out)


def shares(bundle: Bundle, sizes: list[int]) -> list[ExampleArrays]:
    train = load_task("topics").train
    out, start = [], 0
    for n in sizes:
        out.append(encode_examples(bundle, bundle.task("topics"), train[start : start + n]))
        start += n
    return out


def test_one_round_is_fedavg_of_what_each_client_uploads(bundle: Bundle) -> None:
    # Prepare
    clients = shares(bundle, [40, 72])
    initial = initial_module(bundle, "topics")
    plan = FederationPlan(rounds=1, local_epochs=2, lr=5e-3, batch_size=16)
    cohort = Cohort(seed=3)
    updates: dict[int, tuple[dict[str, np.ndarray], int]] = {}

    # Execute: one trainer serves both simulated clients
    final, records = run_federation(
        OrtTrainer(bundle, "topics", threads=1),
        initial,
        clients,
        plan,
        cohort,
        on_update=lambda r, c, w, n: updates.__setitem__(c, (w, n)),
    )

    # Assert: each update is what a real client makes alone (fresh trainer, same random stream)
    for c, data in enumerate(clients):
        alone = OrtTrainer(bundle, "topics", threads=1)
        rng = np.random.default_rng([cohort.seed, 1, c])
        examples, _ = train_round(alone, initial, data, plan.for_round(1), rng)
        assert examples == updates[c][1] == len(data["labels"])
        for name, w in alone.get_module().items():
            np.testing.assert_array_equal(w, updates[c][0][name])
    # the new global module is the example-weighted mean of the two ...
    (w0, n0), (w1, n1) = updates[0], updates[1]
    for name in initial:
        mean = (n0 * w0[name].astype(np.float64) + n1 * w1[name]) / (n0 + n1)
        np.testing.assert_allclose(final[name], mean, rtol=0, atol=1e-6)
    # ... and bit for bit what the server's strategy functions make of them
    acc = WeightedSum({name: w.shape for name, w in initial.items()})
    for w, n in (updates[0], updates[1]):
        acc.add(module_delta(w, initial), n)
    server, _ = fedavg(initial, acc.mean(), StrategyState(), StrategyParams())
    for name in initial:
        np.testing.assert_array_equal(final[name], server[name])
    wire = len(encode_module(initial, bundle.task("topics")))
    assert records[0].clients == (0, 1)
    assert records[0].examples == n0 + n1
    assert records[0].upload_bytes == records[0].download_bytes == 2 * wire


def test_sampling_takes_the_fraction_and_is_seeded() -> None:
    rounds = range(1, 6)
    first = [sample_clients(100, 0.1, r, seed=7) for r in rounds]

    assert first == [sample_clients(100, 0.1, r, seed=7) for r in rounds]
    assert all(len(set(chosen)) == 10 and all(0 <= c < 100 for c in chosen) for chosen in first)
    assert len({tuple(c) for c in first}) == len(first)  # rounds draw different clients
    assert first != [sample_clients(100, 0.1, r, seed=8) for r in rounds]
    assert sample_clients(3, 0.01, 1, seed=0) != []  # at least one client a round


def test_a_run_trains_only_the_sampled_clients_and_evaluates(bundle: Bundle) -> None:
    # Prepare
    clients = shares(bundle, [8] * 6)
    test = shares(bundle, [48 + 40])[0]
    plan = FederationPlan(rounds=2, local_epochs=1, lr=5e-3, batch_size=8)
    seen: list[tuple[int, int]] = []

    # Execute
    _, records = run_federation(
        OrtTrainer(bundle, "topics", threads=1),
        initial_module(bundle, "topics"),
        clients,
        plan,
        Cohort(fraction=0.5, seed=1),
        test,
        on_update=lambda r, c, w, n: seen.append((r, c)),
    )

    # Assert
    for rec in records:
        assert list(rec.clients) == sample_clients(6, 0.5, rec.round, seed=1)
        assert [c for r, c in seen if r == rec.round] == list(rec.clients)
        assert rec.examples == 8 * 3
        assert rec.accuracy is not None and 0.0 <= rec.accuracy <= 1.0


class LrRecorder(OrtTrainer):
    """An OrtTrainer that notes every learning rate it is given."""

    def set_learning_rate(self, lr: float) -> None:
        self.rates = [*getattr(self, "rates", []), lr]
        super().set_learning_rate(lr)


def test_each_round_trains_at_the_scheduled_learning_rate(bundle: Bundle) -> None:
    plan = FederationPlan(rounds=3, local_epochs=1, lr=4e-3, batch_size=8, lr_schedule="cosine")
    trainer = LrRecorder(bundle, "topics", lr=4e-3, threads=1)
    trainer.rates = []
    run_federation(trainer, initial_module(bundle, "topics"), shares(bundle, [8]), plan, Cohort())
    expected = [round_lr(4e-3, "cosine", r, 3) for r in (1, 2, 3)]
    changes = [rate for i, rate in enumerate(trainer.rates) if i == 0 or rate != trainer.rates[i - 1]]
    assert changes == expected and expected[0] > expected[1] > expected[2] > 0


def test_simulate_command_writes_a_table_and_json(tmp_path: Path, bundle: Bundle) -> None:
    import json
    import shutil

    from fedyolo.export.reuse import RECIPE_FILE, BundleRecipe
    from fedyolo.simulate import simulate_command

    # Prepare: reuse the exported bundle by giving it the recipe simulate would write
    out = tmp_path / "sim"
    shutil.copytree(bundle.root, out / "bundle")
    recipe = BundleRecipe("tiny-bert", "lora", 16, 0, {"topics": list(bundle.task("topics").labels)})
    (out / f"bundle.{RECIPE_FILE}").write_text(json.dumps(recipe.__dict__))

    # Execute
    result = simulate_command(
        ["topics"],
        FederationPlan(rounds=2, local_epochs=1, lr=5e-3, batch_size=16),
        Cohort(fraction=0.3, seed=0, eval_every=1),
        clients=10,
        alpha=1.0,
        module="lora",
        backbone="tiny-bert",
        out=out,
        max_length=16,
        train_per_task=200,
        test_per_task=100,
    )

    # Assert
    saved = json.loads((out / "simulate.json").read_text())
    assert saved == json.loads(json.dumps(result))
    rounds = saved["tasks"]["topics"]["rounds"]
    assert [len(r["clients"]) for r in rounds] == [3, 3]
    assert saved["tasks"]["topics"]["train_examples"] == 200
