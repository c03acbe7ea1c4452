"""`fedyolo demo`: a real federated run of several tasks over one frozen backbone, in one command.

export (backbone once, one module per task) → the real server as a process (`python -m fedyolo.fedserver`,
127.0.0.1 only) → one `fedyolo client` process per client and task, talking HTTP and training with ONNX
Runtime → the observer process (held-out accuracy of every committed module) and the fully-local baseline
workers, beside them → collect from the server's history → tables, JSON, PNG (`report`).

The children are started by `launch` and stopped when the demo ends, whatever ends it
(`processes.Children`); `results` puts together the numbers the report shows.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedyolo.demo.chaos import KillPlan, kill_and_restart, nan_update
from fedyolo.demo.config import DemoConfig
from fedyolo.demo.launch import Launch, log_tail
from fedyolo.demo.results import TaskRun, task_result
from fedyolo.demo.watch import ClientView
from fedyolo.demo.worker import WorkerPlan
from fedyolo.export.reuse import ensure_bundle
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import FederationClient
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.http_transport import Connection, FederationError, RetryPolicy
from fedyolo.tasks.shares import share_task, write_shares

TICK_S = 0.1
STATUS_EVERY_S = 0.5
RUN_MARKER = ".fedyolo-demo-run"


class Demo:
    """One run of the demo; `run()` returns the results `report` prints and saves."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.out = config.out
        self.run_dir = config.out / "run"
        self.launch = Launch(config, self.run_dir, console)
        self.tasks: dict[str, TaskRun] = {}
        self.chaos_events: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.isolation: dict[str, Any] | None = None
        self.baseline_state = "starting"
        self.observer_state = "waiting for the first module"
        self.announced_wait = False
        self.local_epochs_done = 0
        self.times: dict[str, float] = {}
        self.bundle: Bundle | None = None
        self.exported = False

    # -- the stages ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        start = time.monotonic()
        try:
            self.prepare()
            self.times["prepare_s"] = time.monotonic() - start
            self.launch.start_server()
            self.start_federation()
            t = time.monotonic()
            self.watch()
            self.times["federation_s"] = time.monotonic() - t
            self.collect()
        finally:
            self.launch.stop()
        self.times["total_s"] = time.monotonic() - start
        return self.result()

    def prepare(self) -> None:
        c = self.config
        if self.run_dir.exists():
            if not (self.run_dir / RUN_MARKER).is_file():
                raise FedyoloError(
                    f"{self.run_dir} exists and is not a demo's run folder; give another --out"
                )
            shutil.rmtree(self.run_dir)  # a fresh server, fresh clients: never resume an old demo
        self.run_dir.mkdir(parents=True)
        (self.run_dir / RUN_MARKER).write_text("made by fedyolo demo; removed by the next run\n")
        for name in c.tasks:
            data = share_task(name, c.clients, c.alpha, c.seed, c.train_per_task, c.test_per_task)
            self.tasks[data.task_id] = TaskRun(data)
            sizes = ", ".join(str(len(s)) for s in data.shares)
            cut = (
                f" (cut from {data.train_available}, stratified, seed {c.seed})"
                if data.train_used < data.train_available
                else ""
            )
            tcut = f" of {data.test_available}" if len(data.test) < data.test_available else ""
            self.console.print(
                f"task [bold]{data.task_id}[/]: {len(data.labels)} labels, {data.train_used} train examples"
                f"{cut}, {len(data.test)}{tcut} held out; clients (alpha {c.alpha:g}): {sizes}"
            )
            write_shares(data, self.run_dir / "data")
        t = time.monotonic()
        self.console.print(
            f"exporting {c.backbone} + one {c.module} module per task into {self.out / 'bundle'} ..."
        )
        self.bundle, self.exported = ensure_bundle(
            self.out / "bundle",
            {task_id: r.data.labels for task_id, r in self.tasks.items()},
            c.backbone,
            c.module,
            c.max_length,
            c.seed,
            on_export=lambda i, task: self.console.print(
                f"  exported task {task} ({time.monotonic() - t:.0f} s)"
            ),
        )
        self.times["export_s"] = time.monotonic() - t
        m = self.bundle.manifest
        modules = ", ".join(f"{k} {v.module_bytes / 1e3:.0f} KB" for k, v in sorted(m.tasks.items()))
        self.console.print(
            f"bundle {'exported' if self.exported else 'reused (same recipe)'} in {self.times['export_s']:.0f} s: "
            f"backbone {m.backbone.id} {m.backbone.file.bytes / 1e6:.1f} MB stored once; modules: {modules}"
        )

    def start_federation(self) -> None:
        c = self.config
        url, key = self.launch.url, self.launch.key
        first = next(iter(self.tasks))
        self.monitor = FederationClient(
            url, name="orchestrator", state_dir=self.run_dir / "clients" / "orchestrator"
        )
        self.monitor.register(key, "orchestrator")
        self.status_conn = Connection(url, retry=RetryPolicy(attempts=5, base_s=0.2))
        if c.chaos:
            assert self.bundle is not None
            event = nan_update(url, key, self.bundle.task(first), self.run_dir / "clients" / "chaos-nan")
            self.chaos_events.append(event)
            self.tasks[first].extra_downloads[event["round"]] = 1
            self.console.print(
                f"[yellow]chaos[/]: client chaos-nan uploaded NaN in {event['tensor']} for {first} round "
                f"{event['round']} -> HTTP {event['status']} {event['code']}"
            )
            self.kill_plan: KillPlan | None = KillPlan(f"{first}-{min(1, c.clients - 1)}", min(2, c.rounds))
        else:
            self.kill_plan = None
        plan = WorkerPlan(
            url=url,
            bundle=str(self.out / "bundle"),
            data_dir=str(self.run_dir / "data"),
            tasks=list(self.tasks),
            clients=c.clients,
            baseline_epochs=c.rounds * c.local_epochs,
            lr=c.lr,
            batch_size=c.batch_size,
            seed=c.seed,
            events_dir=str(self.run_dir / "events"),
            state_dir=str(self.run_dir / "clients" / "observer"),
        )
        workers = self.launch.start_workers(plan)
        self.launch.start_clients(list(self.tasks))
        self.console.print(
            f"started {c.clients * len(self.tasks)} client processes ({c.clients} per task), the observer and "
            f"{workers} local-baseline worker(s); "
            f"{c.rounds} rounds x {c.local_epochs} local epochs, lr {c.lr:g}, batch {c.batch_size}"
        )

    # -- watching --------------------------------------------------------------------------------

    def watch(self) -> None:
        c = self.config
        columns = (
            TextColumn("{task.description:<14}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        progress = Progress(*columns, console=self.console, transient=True)
        rows = {t: progress.add_task(t, total=c.rounds, info="waiting for clients") for t in self.tasks}
        for name in self.launch.views:
            rows[name] = progress.add_task(f"  {name}", total=100, info="starting")
        baseline_total = len(self.tasks) * c.clients * c.rounds * c.local_epochs
        rows["baseline"] = progress.add_task("local baseline", total=baseline_total, info="starting")
        rows["observer"] = progress.add_task("observer", total=None, info=self.observer_state)
        deadline = time.monotonic() + c.timeout_s
        next_status = 0.0
        with progress:
            while True:
                now = time.monotonic()
                self._reap()
                for view in self.launch.views.values():
                    view.update()
                    if self.kill_plan is not None and self.kill_plan.due(view):
                        self._kill_and_restart(view)
                    progress.update(rows[view.name], completed=view.percent, info=view.describe())
                for tail in self.launch.event_tails:
                    for event in tail.read():
                        self._on_event(event)
                progress.update(rows["baseline"], completed=self.local_epochs_done, info=self.baseline_state)
                progress.update(rows["observer"], info=self.observer_state)
                if now >= next_status:
                    next_status = now + STATUS_EVERY_S
                    self._poll_status(progress, rows)
                if self._finished():
                    break
                self._announce_wait(baseline_total)
                if now > deadline:
                    self.failures.append(
                        {"kind": "timeout", "detail": f"the demo ran past --timeout {c.timeout_s:.0f} s"}
                    )
                    self.console.print(f"[red]timeout[/]: stopping after {c.timeout_s:.0f} s")
                    break
                time.sleep(TICK_S)

    def _poll_status(self, progress: Progress, rows: dict[str, Any]) -> None:
        try:
            body = self.status_conn.json("GET", "/v1/status")
        except FederationError as e:
            raise FedyoloError(f"the server stopped answering ({e}); see {self.run_dir / 'logs'}") from e
        for t in body["tasks"]:
            run = self.tasks.get(t["task_id"])
            if run is None:
                continue
            before = run.status.get("rounds_committed", 0)
            run.status = t
            if t["status"] == "finished" and run.finished_at is None:
                run.finished_at = time.monotonic()
            info = (
                "finished"
                if t["status"] == "finished"
                else f"round {t['round']}/{t['rounds_total']} {t['status']}, {t['updates']}/{t['min_clients']} updates"
            )
            last = max(run.evals) if run.evals else None
            if last is not None:
                info += f", held-out acc {run.evals[last]['accuracy']:.1%} (v{last})"
            progress.update(rows[t["task_id"]], completed=t["rounds_committed"], info=info)
            if t["rounds_committed"] > before:
                self.console.print(
                    f"{t['task_id']}: round {t['rounds_committed']} committed "
                    f"({t['updates_total']} updates so far)"
                )

    def _reap(self) -> None:
        for child in self.launch.failed():
            code = child.exit_codes[-1]
            view = self.launch.views.get(child.name)
            if view is not None:
                view.stage = "failed"
            self.failures.append(
                {
                    "kind": "process_failed",
                    "process": child.name,
                    "exit_code": code,
                    "log_tail": log_tail(child.log_path),
                }
            )
            self.console.print(
                f"[red]{child.name} exited with code {code}[/]: {log_tail(child.log_path)} "
                "(the run goes on; its rounds close at their deadline)"
            )
            if child.name == "server":
                raise FedyoloError(f"the server exited with code {code}; see {child.log_path}")

    def _kill_and_restart(self, view: ClientView) -> None:
        assert self.kill_plan is not None
        self.kill_plan.done = True
        run = self.tasks[view.task]
        run.extra_downloads[view.round] = run.extra_downloads.get(view.round, 0) + 1
        self.chaos_events += kill_and_restart(self.launch.children, view, self.console)

    def _announce_wait(self, baseline_total: int) -> None:
        """Once the rounds are over, say what the demo still waits for (it can take minutes)."""
        if self.announced_wait or not all(r.status.get("status") == "finished" for r in self.tasks.values()):
            return
        self.announced_wait = True
        running = {c.name for c in self.launch.children.running()}
        left = []
        if any(name.startswith("baseline-") for name in running):
            left.append(
                f"the fully-local baseline ({self.local_epochs_done} of {baseline_total} client epochs done)"
            )
        if "observer" in running:
            left.append("the observer (held-out accuracy of the last modules, then the no-forgetting check)")
        if left:
            self.console.print(f"federated rounds finished; waiting for {' and '.join(left)}")

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "eval":
            run = self.tasks[event["task"]]
            run.evals[int(event["version"])] = event
            self.observer_state = f"evaluated {event['task']} v{event['version']}"
            self.console.print(
                f"{event['task']}: module v{event['version']} held-out accuracy {event['accuracy']:.1%} "
                f"({event['examples']} examples)"
            )
        elif kind == "local_epoch":
            self.local_epochs_done += 1
            self.baseline_state = (
                f"{event['task']} client {event['client']}: epoch {event['epoch']}/{event['epochs']}"
            )
        elif kind == "local_done":
            self.tasks[event["task"]].local.append(event)
            self.baseline_state = f"{event['task']} client {event['client']}: {event['accuracy']:.1%}"
            self.console.print(
                f"{event['task']}: client {event['client']} alone, {event['epochs']} epochs on its own share: "
                f"held-out accuracy {event['accuracy']:.1%}"
            )
        elif kind == "isolation_start":
            self.observer_state = f"no-forgetting check: training {event['other']} beside {event['task']}"
            self.console.print(f"observer: {self.observer_state}")
        elif kind == "isolation":
            self.isolation = event
            self.observer_state = "no-forgetting check done"
        elif kind == "error":
            self.failures.append({"kind": "worker_failed", "detail": event["detail"]})
            self.console.print(f"[red]a demo worker failed[/]: {event['detail']}")

    def _finished(self) -> bool:
        tasks_done = all(r.status.get("status") == "finished" for r in self.tasks.values())
        children = self.launch.children.children.values()
        clients_done = not any(c.running for c in children if c.name in self.launch.views)
        workers_done = not any(c.running for c in children if c.name != "server")
        return tasks_done and clients_done and workers_done

    # -- results ---------------------------------------------------------------------------------

    def collect(self) -> None:
        for task_id, run in self.tasks.items():
            run.history = self.monitor.history(task_id)
            response = self.monitor.conn.request("GET", f"/v1/tasks/{task_id}/modules/0")
            run.wire_bytes = len(response.content)
        self.monitor.close()
        self.status_conn.close()

    def result(self) -> dict[str, Any]:
        assert self.bundle is not None
        c = self.config
        manifest = self.bundle.manifest
        tasks = {
            task_id: task_result(run, manifest.tasks[task_id], manifest.backbone.full_model_bytes)
            for task_id, run in self.tasks.items()
        }
        return {
            "config": {**asdict(c), "out": str(c.out), "tasks": list(c.tasks)},
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "url": self.launch.url,
            "exported": self.exported,
            "times": self.times,
            "backbone": {
                "id": manifest.backbone.id,
                "file_bytes": manifest.backbone.file.bytes,
                "full_model_bytes": manifest.backbone.full_model_bytes,
            },
            "tasks": tasks,
            "chaos": self.chaos_events,
            "failures": self.failures,
            "isolation": self.isolation,
        }
