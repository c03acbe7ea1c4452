"""The demo's fully-local baseline workers (`fedyolo.experiments.local_baseline`), beside the clients:
`python -m fedyolo.demo.baseline PLAN.json WORKER WORKERS`, one per core, so the CPU never idles while a
round waits for a straggler."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from fedyolo.demo.worker import Events, WorkerPlan, baseline_events
from fedyolo.experiments.local_baseline import LocalRun
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.local import load_arrays
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.tasks.shares import client_data_path, test_data_path


def worker_main(plan: WorkerPlan, worker: int, workers: int) -> None:
    """Train every `workers`-th (task, client) of the plan alone, starting at `worker`; emit events."""
    events = Events(Path(plan.events_dir) / baseline_events(worker))
    try:
        bundle = open_bundle(plan.bundle, tasks=plan.tasks)
        backbone = SharedBackbone(bundle)
        data_dir = Path(plan.data_dir)
        trainers: dict[str, OrtTrainer] = {}
        tests: dict[str, ExampleArrays] = {}
        mine = plan.baseline_runs()[worker::workers]
        events.emit("ready", runs=len(mine))
        for task, client in mine:
            if task not in trainers:
                trainers[task] = OrtTrainer(bundle, task, backbone, plan.lr, threads=1)
                tests[task] = load_arrays(bundle, task, test_data_path(data_dir, task))
            data = load_arrays(bundle, task, client_data_path(data_dir, task, client))
            run = LocalRun(
                trainers[task],
                client,
                initial_module(bundle, task),
                data,
                plan.baseline_epochs,
                plan.lr,
                plan.batch_size,
                plan.seed,
            )
            run.start()
            while not run.done:
                loss = run.epoch()
                events.emit(
                    "local_epoch",
                    task=task,
                    client=client,
                    epoch=run.epochs_done,
                    epochs=run.epochs,
                    loss=loss,
                )
            events.emit("local_done", task=task, **asdict(run.result(tests[task])))
    except Exception as e:
        events.emit("error", detail=f"{type(e).__name__}: {e}")
        raise
    events.emit("done")
    events.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m fedyolo.demo.baseline PLAN.json WORKER WORKERS`."""
    args = sys.argv[1:] if argv is None else argv
    worker_main(WorkerPlan.read(Path(args[0])), int(args[1]), int(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
