"""The demo's observer: one process that holds every task over ONE shared backbone, as a device would.

- It evaluates every committed global module version of every task on the task's held-out test
  split, downloaded from the server like any client would, as soon as the version is committed.
- At the end it checks that training one task leaves another task's module bit-identical and its
  held-out accuracy unchanged: one module per task means no forgetting.

Run as `python -m fedyolo.demo.observer PLAN.json`; it writes JSON-line events (`worker.Events`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from fedyolo.demo.worker import OBSERVER_EVENTS, Events, WorkerPlan
from fedyolo.experiments.forgetting import train_beside
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.client import FederationClient
from fedyolo.runtime.http_transport import Connection, RetryPolicy
from fedyolo.runtime.local import evaluate_arrays, load_arrays
from fedyolo.runtime.manifest import sha256_file
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.runtime.wire import ModuleWeights, module_sha256
from fedyolo.tasks.shares import client_data_path, test_data_path

POLL_S = 0.25


class Observer:
    def __init__(self, plan: WorkerPlan, events: Events) -> None:
        self.plan, self.events = plan, events
        self.bundle = open_bundle(plan.bundle, tasks=plan.tasks)
        self.backbone = SharedBackbone(self.bundle)  # loaded once for every task
        self.test: dict[str, ExampleArrays] = {}
        self.trainers: dict[str, OrtTrainer] = {}
        for task in plan.tasks:
            self.test[task] = load_arrays(self.bundle, task, test_data_path(Path(plan.data_dir), task))
            self.trainers[task] = OrtTrainer(self.bundle, task, self.backbone, plan.lr, threads=1)
        self.evaluated = {task: -1 for task in plan.tasks}
        self.final: dict[str, ModuleWeights] = {}
        self.client = FederationClient(plan.url, name="observer", state_dir=plan.state_dir)
        self.client.register(os.environ["FEDYOLO_ENROLL_KEY"], "observer")
        self.status = Connection(plan.url, retry=RetryPolicy(attempts=5, base_s=0.2))

    def committed(self) -> dict[str, tuple[int, bool]]:
        """Per task: the newest committed module version and whether the task is finished."""
        body = self.status.json("GET", "/v1/status")
        return {
            t["task_id"]: (int(t["rounds_committed"]), t["status"] == "finished")
            for t in body["tasks"]
            if t["task_id"] in self.evaluated
        }

    def evaluate(self, task: str, version: int) -> None:
        trainer = self.trainers[task]
        weights = self.client.download_module(trainer.task, version)
        trainer.set_module(weights)
        result = evaluate_arrays(trainer, self.test[task])
        self.final[task] = weights
        self.evaluated[task] = version
        self.events.emit(
            "eval",
            task=task,
            version=version,
            accuracy=result.accuracy,
            loss=result.loss,
            examples=result.examples,
            sha256=module_sha256(weights, trainer.task),
        )

    def run(self) -> None:
        self.events.emit("ready", tasks=self.plan.tasks)
        while True:
            state = self.committed()
            pending = [(t, self.evaluated[t] + 1) for t, (v, _) in state.items() if self.evaluated[t] < v]
            if pending:
                self.evaluate(*pending[0])
            elif all(finished for _, finished in state.values()):
                break
            else:
                time.sleep(POLL_S)
        self.check_isolation()

    def check_isolation(self) -> None:
        """Train task B in this process, over the same backbone; task A's module must not move."""
        if len(self.plan.tasks) < 2:
            return
        a, b = self.plan.tasks[0], self.plan.tasks[1]
        self.events.emit("isolation_start", task=a, other=b)
        self.trainers[a].set_module(self.final[a])
        data = load_arrays(self.bundle, b, client_data_path(Path(self.plan.data_dir), b, 0))
        p = self.plan
        beside = train_beside(
            self.trainers[a], self.test[a], self.trainers[b], self.final[b], data, p.lr, p.batch_size, p.seed
        )
        self.events.emit(
            "isolation",
            task=a,
            other=b,
            other_trained_examples=len(data["labels"]),
            **asdict(beside),
            backbone_unchanged=sha256_file(self.bundle.backbone_path)
            == self.bundle.manifest.backbone.file.sha256,
        )

    def close(self) -> None:
        self.client.close()
        self.status.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plan = WorkerPlan.read(Path(args[0]))
    events = Events(Path(plan.events_dir) / OBSERVER_EVENTS)
    try:
        observer = Observer(plan, events)
        try:
            observer.run()
        finally:
            observer.close()
    except Exception as e:  # the orchestrator shows it; the demo goes on without the observer's numbers
        events.emit("error", detail=f"{type(e).__name__}: {e}")
        raise
    events.emit("done")
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
