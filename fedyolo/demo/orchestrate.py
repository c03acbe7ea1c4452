"""`fedyolo demo`: a real federated run of several tasks over one frozen backbone, in one command.

export (backbone once, one module per task) → the real server as a process (`python -m fedyolo.fedserver`,
127.0.0.1 only) → one `fedyolo client` process per client and task, talking HTTP and training with ONNX
Runtime → the observer process (held-out accuracy of every committed module) and the fully-local baseline
workers, beside them → collect from the server's history → tables, JSON, PNG (`report`).

Every child is stopped when the demo ends, whatever ends it (`processes.Children`).
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedyolo.demo.baseline import events_file as baseline_events
from fedyolo.demo.chaos import KillPlan, nan_update
from fedyolo.demo.observer import EVENTS_FILE as OBSERVER_EVENTS
from fedyolo.demo.plan import TaskPlan, client_data_path, ensure_bundle, plan_task, write_plan
from fedyolo.demo.processes import Child, Children, child_env
from fedyolo.demo.watch import ClientView, EventTail, LineTail
from fedyolo.demo.worker import WorkerPlan
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import FederationClient
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.http_transport import Connection, FederationError, RetryPolicy

HOST = "127.0.0.1"
TICK_S = 0.1
STATUS_EVERY_S = 0.5
RESTART_AFTER_S = 1.0
RUN_MARKER = ".fedyolo-demo-run"


@dataclass(frozen=True)
class DemoConfig:
    """Everything `fedyolo demo` decides. Defaults fit 2 CPU cores in well under 10 minutes (README)."""

    clients: int = 4
    alpha: float = 1.0
    rounds: int = 4
    local_epochs: int = 1
    module: str = "lora"
    tasks: tuple[str, ...] = ("topics", "language")
    backbone: str = "minilm"
    out: Path = Path("demo_out")
    chaos: bool = False
    seed: int = 0
    port: int = 0
    lr: float = 2e-3
    batch_size: int = 16
    max_length: int = 24
    train_per_task: int = 1500
    test_per_task: int = 600
    round_deadline_s: float = 300.0
    timeout_s: float = 1500.0

    def __post_init__(self) -> None:
        problems = []
        if self.clients < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            problems.append("--clients, --rounds, --local-epochs and --batch-size must be at least 1")
        if self.chaos and self.clients < 2:
            problems.append("--chaos kills one client mid-round: use --clients 2 or more")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            problems.append("--tasks must name one task or more, each once (e.g. topics,language)")
        if not (self.alpha > 0 and self.lr > 0):
            problems.append("--alpha and --lr must be positive")
        if not 0 <= self.port < 65536:
            problems.append("--port must be 0 (any free port) or a port number")
        if problems:
            raise FedyoloError("; ".join(problems))


@dataclass
class TaskRun:
    """One task as the run goes: the server's view, the observer's evaluations, the local baseline."""

    plan: TaskPlan
    status: dict[str, Any] = field(default_factory=dict)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)  # module version -> held-out metrics
    local: list[dict[str, Any]] = field(default_factory=list)
    extra_downloads: dict[int, int] = field(default_factory=dict)  # round -> module downloads not in updates
    finished_at: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the server's committed rounds
    wire_bytes: int = 0  # one module on the wire (safetensors)


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Demo:
    """One run of the demo; `run()` returns the results `report` prints and saves."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.out = config.out
        self.run_dir = config.out / "run"
        self.children = Children()
        self.key = secrets.token_urlsafe(24)
        self.url = ""
        self.tasks: dict[str, TaskRun] = {}
        self.views: dict[str, ClientView] = {}
        self.chaos_events: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.isolation: dict[str, Any] | None = None
        self.baseline_state = "starting"
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
            self.start_server()
            self.start_federation()
            t = time.monotonic()
            self.watch()
            self.times["federation_s"] = time.monotonic() - t
            self.collect()
        finally:
            # Clients first, the server last (it is what they talk to).
            self.children.stop_all(order=lambda c: 1 if c.name == "server" else 0)
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
            plan = plan_task(name, c.clients, c.alpha, c.seed, c.train_per_task, c.test_per_task)
            self.tasks[plan.task_id] = TaskRun(plan)
            sizes = ", ".join(str(len(s)) for s in plan.shares)
            cut = (
                f" (cut from {plan.train_available}, stratified, seed {c.seed})"
                if plan.train_used < plan.train_available
                else ""
            )
            tcut = f" of {plan.test_available}" if len(plan.test) < plan.test_available else ""
            self.console.print(
                f"task [bold]{plan.task_id}[/]: {len(plan.labels)} labels, {plan.train_used} train examples"
                f"{cut}, {len(plan.test)}{tcut} held out; clients (alpha {c.alpha:g}): {sizes}"
            )
            write_plan(plan, self.run_dir / "data")
        t = time.monotonic()
        self.console.print(
            f"exporting {c.backbone} + one {c.module} module per task into {self.out / 'bundle'} ..."
        )
        self.bundle, self.exported = ensure_bundle(
            self.out / "bundle",
            [r.plan for r in self.tasks.values()],
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

    def start_server(self) -> None:
        c = self.config
        # A port found free can be taken before the server binds it: with --port 0, try another one.
        for _ in range(1 if c.port else 3):
            port = c.port or free_port()
            self.url = f"http://{HOST}:{port}"
            argv = [
                sys.executable, "-m", "fedyolo.fedserver", str(self.out / "bundle"),
                "--host", HOST, "--port", str(port),
                "--rounds", str(c.rounds), "--min-clients", str(c.clients),
                "--state-dir", str(self.run_dir / "server"), "--deadline-s", str(c.round_deadline_s),
                "--local-epochs", str(c.local_epochs), "--lr", str(c.lr), "--batch-size", str(c.batch_size),
                "--log-level", "warning",
            ]  # fmt: skip
            server = self.children.start("server", argv, self.run_dir / "logs" / "server.log", self._env())
            if self._wait_healthy(server):
                self.console.print(f"server up at {self.url} (state in {self.run_dir / 'server'})")
                return
            self.children.kill("server")
        raise FedyoloError(
            f"the server did not start on {self.url}: {_tail(server.log_path)}; see the log, or pick another --port"
        )

    def _wait_healthy(self, server: Child, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while server.running and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        return False

    def start_federation(self) -> None:
        c = self.config
        first = next(iter(self.tasks))
        self.monitor = FederationClient(
            self.url, name="orchestrator", state_dir=self.run_dir / "clients" / "orchestrator"
        )
        self.monitor.register(self.key, "orchestrator")
        self.status_conn = Connection(self.url, retry=RetryPolicy(attempts=5, base_s=0.2))
        if c.chaos:
            assert self.bundle is not None
            event = nan_update(
                self.url, self.key, self.bundle.task(first), self.run_dir / "clients" / "chaos-nan"
            )
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
            url=self.url,
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
        plan_path = self.run_dir / "workers.json"
        plan.write(plan_path)
        events_dir = Path(plan.events_dir)
        self.event_tails = [EventTail(events_dir / OBSERVER_EVENTS)]
        self.children.start(
            "observer",
            [sys.executable, "-m", "fedyolo.demo.observer", str(plan_path)],
            self.run_dir / "logs" / "observer.log",
            self._env(),
        )
        # The baseline trains beside the clients, one worker per core: when a round waits for a straggler,
        # or the federation is over, the baseline still keeps every core busy.
        workers = max(1, min(os.cpu_count() or 1, len(plan.baseline_runs())))
        for w in range(workers):
            self.event_tails.append(EventTail(events_dir / baseline_events(w)))
            self.children.start(
                f"baseline-{w}",
                [sys.executable, "-m", "fedyolo.demo.baseline", str(plan_path), str(w), str(workers)],
                self.run_dir / "logs" / f"baseline-{w}.log",
                self._env(),
            )
        for task in self.tasks:
            for i in range(c.clients):
                name = f"{task}-{i}"
                argv = [
                    sys.executable, "-m", "fedyolo.cli", "client", self.url,
                    "--task", task, "--data", str(client_data_path(self.run_dir / "data", task, i)),
                    "--state-dir", str(self.run_dir / "clients" / name),
                    "--cache-dir", str(self.run_dir / "device_cache"), "--name", name, "--threads", "1",
                ]  # fmt: skip
                log_path = self.run_dir / "logs" / f"{name}.log"
                self.children.start(name, argv, log_path, self._env())
                self.views[name] = ClientView(name, task, LineTail(log_path))
        self.console.print(
            f"started {c.clients * len(self.tasks)} client processes ({c.clients} per task), the observer and "
            f"{workers} local-baseline worker(s); "
            f"{c.rounds} rounds x {c.local_epochs} local epochs, lr {c.lr:g}, batch {c.batch_size}"
        )

    def _env(self) -> dict[str, str]:
        return child_env(FEDYOLO_ENROLL_KEY=self.key, FEDYOLO_HOME=str(self.run_dir / "home"))

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
        for name in self.views:
            rows[name] = progress.add_task(f"  {name}", total=100, info="starting")
        baseline_total = len(self.tasks) * c.clients * c.rounds * c.local_epochs
        rows["baseline"] = progress.add_task("local baseline", total=baseline_total, info="starting")
        deadline = time.monotonic() + c.timeout_s
        next_status = 0.0
        with progress:
            while True:
                now = time.monotonic()
                self._reap()
                for view in self.views.values():
                    view.update()
                    if self.kill_plan is not None and self.kill_plan.due(view):
                        self._kill_and_restart(view)
                    progress.update(rows[view.name], completed=view.percent, info=view.describe())
                for tail in self.event_tails:
                    for event in tail.events():
                        self._on_event(event)
                progress.update(rows["baseline"], completed=self.local_epochs_done, info=self.baseline_state)
                if now >= next_status:
                    next_status = now + STATUS_EVERY_S
                    self._poll_status(progress, rows)
                if self._finished():
                    break
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
        for child in self.children.reap():
            code = child.exit_codes[-1]
            if child.expected_exit or code == 0:
                continue
            view = self.views.get(child.name)
            if view is not None:
                view.stage = "failed"
            self.failures.append(
                {
                    "kind": "process_failed",
                    "process": child.name,
                    "exit_code": code,
                    "log_tail": _tail(child.log_path),
                }
            )
            self.console.print(
                f"[red]{child.name} exited with code {code}[/]: {_tail(child.log_path)} "
                "(the run goes on; its rounds close at their deadline)"
            )
            if child.name == "server":
                raise FedyoloError(f"the server exited with code {code}; see {child.log_path}")

    def _kill_and_restart(self, view: ClientView) -> None:
        assert self.kill_plan is not None
        self.kill_plan.done = True
        self.children.kill(view.name)
        self.chaos_events.append(
            {
                "kind": "kill",
                "client": view.name,
                "task": view.task,
                "round": view.round,
                "percent": view.percent,
                "signal": "SIGKILL",
                "time": time.time(),
            }
        )
        run = self.tasks[view.task]
        run.extra_downloads[view.round] = run.extra_downloads.get(view.round, 0) + 1
        self.console.print(
            f"[yellow]chaos[/]: killed {view.name} (SIGKILL) at {view.percent} % of round {view.round}; "
            f"restarting it from its state dir"
        )
        view.stage = "killed"
        time.sleep(RESTART_AFTER_S)
        self.children.restart(view.name)
        view.stage = "starting"
        self.chaos_events.append(
            {
                "kind": "restart",
                "client": view.name,
                "task": view.task,
                "round": view.round,
                "time": time.time(),
            }
        )

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "eval":
            run = self.tasks[event["task"]]
            run.evals[int(event["version"])] = event
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
        elif kind == "isolation":
            self.isolation = event
        elif kind == "error":
            self.failures.append({"kind": "worker_failed", "detail": event["detail"]})
            self.console.print(f"[red]a demo worker failed[/]: {event['detail']}")

    def _finished(self) -> bool:
        tasks_done = all(r.status.get("status") == "finished" for r in self.tasks.values())
        clients_done = not any(c.running for c in self.children.children.values() if c.name in self.views)
        workers_done = not any(c.running for c in self.children.children.values() if c.name != "server")
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
        tasks = {}
        for task_id, run in self.tasks.items():
            spec = manifest.tasks[task_id]
            head_bytes = sum(4 * t.numel for t in spec.trainable if t.name.startswith("head."))
            full_per_transfer = manifest.backbone.full_model_bytes + head_bytes
            wire = run.wire_bytes or spec.module_bytes
            history = run.history
            rows: list[dict[str, Any]] = [
                {"round": 0, **_metrics(run.evals.get(0)), "updates": 0, "examples": 0}
            ]
            for h in history:
                r = int(h["round"])
                downloads = int(h["updates"]) + run.extra_downloads.get(r, 0)
                rows.append(
                    {
                        "round": r,
                        **_metrics(run.evals.get(int(h["module_version"]))),
                        "updates": int(h["updates"]),
                        "examples": int(h["examples"]),
                        "train_loss": h["metrics"].get("train_loss"),
                        "client_accuracy_before": h["metrics"].get("accuracy"),
                        "uploaded_bytes": int(h["bytes_received"]),
                        "downloads": downloads,
                        "downloaded_bytes": downloads * wire,
                        "seconds": (h["committed_at"] or 0) - (h["opened_at"] or 0),
                    }
                )
            uploads = sum(r.get("updates", 0) for r in rows)
            downloads = sum(r.get("downloads", 0) for r in rows)
            up_bytes = sum(r.get("uploaded_bytes", 0) for r in rows)
            down_bytes = sum(r.get("downloaded_bytes", 0) for r in rows)
            local = sorted(run.local, key=lambda e: e["client"])
            tasks[task_id] = {
                "labels": len(run.plan.labels),
                "train_used": run.plan.train_used,
                "train_available": run.plan.train_available,
                "test_used": len(run.plan.test),
                "test_available": run.plan.test_available,
                "client_sizes": [len(s) for s in run.plan.shares],
                "module_kind": spec.module_kind,
                "module_bytes_on_wire": wire,
                "rounds": rows,
                "federated_final_accuracy": rows[-1].get("accuracy") if len(rows) > 1 else None,
                "bytes": {
                    "uploads": uploads,
                    "downloads": downloads,
                    "uploaded": up_bytes,
                    "downloaded": down_bytes,
                    "full_finetuning_per_transfer": full_per_transfer,
                    "full_finetuning_total": (uploads + downloads) * full_per_transfer,
                    "ratio": (uploads + downloads) * full_per_transfer / max(up_bytes + down_bytes, 1),
                },
                "local": [
                    {k: e[k] for k in ("client", "examples", "epochs", "accuracy", "loss")} for e in local
                ],
                "local_mean_accuracy": sum(e["accuracy"] for e in local) / len(local) if local else None,
            }
        return {
            "config": {**asdict(c), "out": str(c.out), "tasks": list(c.tasks)},
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "url": self.url,
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


def _metrics(event: dict[str, Any] | None) -> dict[str, Any]:
    if event is None:
        return {"accuracy": None, "loss": None}
    return {"accuracy": event["accuracy"], "loss": event["loss"], "sha256": event["sha256"]}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"
