"""One aggregation path: the same updates, uploaded to the real server over HTTP by the real client and
run through `fedyolo simulate`'s round loop, give bit-identical modules for every strategy, clipped."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.client import FederationClient
from fedyolo.runtime.http_transport import RetryPolicy
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import STRATEGY_NAMES, FederationPlan, StrategyParams
from fedyolo.runtime.trainer import Batch, EvalResult
from fedyolo.runtime.wire import ModuleWeights, decode_module
from fedyolo.simulate import Cohort, run_federation
from tests.synthetic import build_bundle, head_module

KEY = "one-fold-enrollment-key-0123456789"
EXAMPLES = [7, 30, 2]  # per client: the weights of the mean
ROUNDS = 2


class ScriptedTrainer:
    """Uploads prepared module weights, one per `get_module` call, in order: the updates are given."""

    def __init__(self, task: TaskSpec, script: list[ModuleWeights]) -> None:
        self.task = task
        self.script = list(script)

    def step(self, batch: Batch) -> float:
        return 1.0

    def evaluate(self, batches: Iterable[Batch]) -> EvalResult:
        n = sum(len(b["labels"]) for b in batches)
        return EvalResult(loss=1.0, accuracy=0.5, examples=n)

    def predict(self, batch: Batch) -> np.ndarray:
        return np.zeros((len(batch["labels"]), len(self.task.labels)), dtype=np.float32)

    def get_module(self) -> ModuleWeights:
        return self.script.pop(0)

    def set_module(self, weights: ModuleWeights) -> None:
        pass

    def set_learning_rate(self, lr: float) -> None:
        pass


def scripted_updates(task: TaskSpec) -> dict[tuple[int, int], ModuleWeights]:
    """(round, client) -> an update; client 1's are far out, so clipping bites."""
    rng = np.random.default_rng(0)
    updates = {}
    for r in range(1, ROUNDS + 1):
        for c in range(len(EXAMPLES)):
            scale = 5.0 if c == 1 else 0.1
            updates[(r, c)] = {
                t.name: (scale * rng.standard_normal(t.shape)).astype(np.float32) for t in task.trainable
            }
    return updates


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_server_and_simulate_fold_the_same_updates_into_the_same_module(
    tmp_path: Path, strategy: str
) -> None:
    # Prepare
    bundle = open_bundle(build_bundle(tmp_path / "bundle", tasks={"topics": head_module(32, 5)}))
    task = bundle.task("topics")
    plan = FederationPlan(
        rounds=ROUNDS,
        batch_size=4,
        clip_norm=2.0,
        strategy=strategy,
        strategy_params=StrategyParams(server_lr=0.5 if strategy != "fedadam" else 0.05, momentum=0.7),
    )
    updates = scripted_updates(task)
    datas = [{"labels": np.zeros(n, dtype=np.int64)} for n in EXAMPLES]
    config = ServerConfig(
        bundle_dir=bundle.root, state_dir=tmp_path / "state", plan=plan, min_clients=3, enroll_key=KEY
    )

    # Execute: over HTTP, the real client, one client after another so the acceptance order is known
    with serve_in_thread(config) as url:
        clients = [
            FederationClient(url, state_dir=tmp_path / f"c{c}", retry=RetryPolicy(attempts=3, base_s=0.01))
            for c in range(len(EXAMPLES))
        ]
        for client in clients:
            client.register(KEY)
        for r in range(1, ROUNDS + 1):
            for c, client in enumerate(clients):

                def factory(b: object, t: str, c: int = c, r: int = r) -> ScriptedTrainer:
                    return ScriptedTrainer(task, [updates[(r, c)]])

                results = client.run("topics", factory, datas[c], rounds=1, bundle=bundle, long_poll_s=5.0)
                assert [(x.round, x.outcome) for x in results] == [(r, "accepted")]
        final = clients[0].current_round("topics", newer_than=ROUNDS, wait_s=10.0)
        assert final["status"] == "finished"
        served = clients[0].download_module(task, ROUNDS)
        for client in clients:
            client.close()
    # ... and in simulate's round loop, one trainer serving every client in turn
    script = [updates[(r, c)] for r in range(1, ROUNDS + 1) for c in range(len(EXAMPLES))]
    initial = decode_module(bundle.task_file("topics", "module.safetensors").read_bytes(), task)
    simulated, records = run_federation(ScriptedTrainer(task, script), initial, datas, plan, Cohort())

    # Assert
    assert [r.examples for r in records] == [sum(EXAMPLES)] * ROUNDS
    for name in simulated:
        np.testing.assert_array_equal(served[name], simulated[name])
    assert any(not np.array_equal(simulated[n], initial[n]) for n in initial)
