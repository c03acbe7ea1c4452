"""The demo's processes: the real server (127.0.0.1 only), the observer, the local-baseline workers and one
`fedyolo client` per client and task, started with the environment they share and stopped in order.

The children themselves (sessions, death with the parent, restarts) are `processes.Children`.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from fedyolo.demo.config import DemoConfig
from fedyolo.demo.processes import Child, Children, child_env
from fedyolo.demo.watch import ClientView
from fedyolo.demo.worker import OBSERVER_EVENTS, WorkerPlan, baseline_events
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.events import JsonLinesTail
from fedyolo.tasks.shares import client_data_path

HOST = "127.0.0.1"


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a child's log on one line, for a failure message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


class Launch:
    """The demo's children, each with its log under `run_dir/logs` (for people) and its JSON-line events
    under `run_dir/events` (for the demo: `views` for the clients, `event_tails` for the workers)."""

    def __init__(self, config: DemoConfig, run_dir: Path, console: Console) -> None:
        self.config = config
        self.bundle_dir = config.out / "bundle"
        self.run_dir = run_dir
        self.console = console
        self.children = Children()
        self.key = secrets.token_urlsafe(24)  # the enrollment key the server and its clients share
        self.url = ""
        self.views: dict[str, ClientView] = {}
        self.event_tails: list[JsonLinesTail] = []

    def env(self) -> dict[str, str]:
        """The environment of every child."""
        return child_env(FEDYOLO_ENROLL_KEY=self.key, FEDYOLO_HOME=str(self.run_dir / "home"))

    def start_server(self) -> None:
        """`python -m fedyolo.fedserver` on the bundle, up once it answers /healthz."""
        c = self.config
        # A port found free can be taken before the server binds it: with --port 0, try another one.
        for _ in range(1 if c.port else 3):
            port = c.port or free_port()
            self.url = f"http://{HOST}:{port}"
            argv = [
                sys.executable, "-m", "fedyolo.fedserver", str(self.bundle_dir),
                "--host", HOST, "--port", str(port),
                "--rounds", str(c.rounds), "--min-clients", str(c.clients),
                "--state-dir", str(self.run_dir / "server"), "--deadline-s", str(c.round_deadline_s),
                "--local-epochs", str(c.local_epochs), "--lr", str(c.lr), "--batch-size", str(c.batch_size),
                "--log-level", "warning",
            ]  # fmt: skip
            server = self.children.start("server", argv, self.run_dir / "logs" / "server.log", self.env())
            if self._wait_healthy(server):
                self.console.print(f"server up at {self.url} (state in {self.run_dir / 'server'})")
                return
            self.children.kill("server")
        raise FedyoloError(
            f"the server did not start on {self.url}: {log_tail(server.log_path)}; see the log, or pick another --port"
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

    def start_workers(self, plan: WorkerPlan) -> int:
        """The observer and the local-baseline workers, on `plan`; returns how many baseline workers."""
        plan_path = self.run_dir / "workers.json"
        plan.write(plan_path)
        events_dir = Path(plan.events_dir)
        self.event_tails.append(JsonLinesTail(events_dir / OBSERVER_EVENTS))
        self.children.start(
            "observer",
            [sys.executable, "-m", "fedyolo.demo.observer", str(plan_path)],
            self.run_dir / "logs" / "observer.log",
            self.env(),
        )
        # The baseline trains beside the clients, one worker per core: when a round waits for a straggler,
        # or the federation is over, the baseline still keeps every core busy.
        workers = max(1, min(os.cpu_count() or 1, len(plan.baseline_runs())))
        for w in range(workers):
            self.event_tails.append(JsonLinesTail(events_dir / baseline_events(w)))
            self.children.start(
                f"baseline-{w}",
                [sys.executable, "-m", "fedyolo.demo.baseline", str(plan_path), str(w), str(workers)],
                self.run_dir / "logs" / f"baseline-{w}.log",
                self.env(),
            )
        return workers

    def start_clients(self, tasks: list[str]) -> None:
        """`fedyolo client` for each task and client, on that client's share of the data."""
        for task in tasks:
            for i in range(self.config.clients):
                name = f"{task}-{i}"
                events = self.run_dir / "events" / "clients" / f"{name}.jsonl"
                argv = [
                    sys.executable, "-m", "fedyolo.cli", "client", self.url,
                    "--task", task, "--data", str(client_data_path(self.run_dir / "data", task, i)),
                    "--state-dir", str(self.run_dir / "clients" / name),
                    "--cache-dir", str(self.run_dir / "device_cache"), "--name", name, "--threads", "1",
                    "--events", str(events),
                ]  # fmt: skip
                self.children.start(name, argv, self.run_dir / "logs" / f"{name}.log", self.env())
                self.views[name] = ClientView(name, task, JsonLinesTail(events))

    def failed(self) -> list[Child]:
        """The children that exited since the last call with a non-zero code nobody asked for."""
        return [c for c in self.children.reap() if not (c.expected_exit or c.exit_codes[-1] == 0)]

    def stop(self) -> None:
        """Every child: the clients and workers first, the server last (it is what they talk to)."""
        self.children.stop_all(order=lambda c: 1 if c.name == "server" else 0)
