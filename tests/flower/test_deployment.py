"""Deployment as Flower runs it: a SuperLink and three SuperNodes as separate processes on loopback,
started by Flower's own commands, our ClientApp on each, two rounds of `topics` submitted by `flwr run`.

Every process is started in its own process group and stopped at the end (SIGTERM, then SIGKILL after a
bounded wait); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedyolo.flower.project import connection_toml, new_project
from fedyolo.flower.settings import FlowerRun
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import decode_module

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (the flower extra installs it)")
    return str(found)


class Processes:
    """Processes started for the test, each in its own group; `stop` ends them all, bounded."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, start_new_session=True
        )
        self.started.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for _, proc in self.started:  # children a process left behind in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    env = dict(os.environ)
    env |= {
        "FLWR_HOME": str(tmp_path / "flwr_home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        # the SuperLink and SuperNodes start Flower's other commands (flower-superexec) from PATH
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    procs = Processes(tmp_path / "logs", env)
    try:
        yield procs
    finally:
        procs.stop()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def test_superlink_and_three_supernodes_train_two_rounds(
    tiny_bert_bundle: Path, tmp_path: Path, processes: Processes
) -> None:
    # Prepare: the app project, Flower's connection config, the SuperLink and three SuperNodes
    out = tmp_path / "out"
    run = FlowerRun(
        bundle=tiny_bert_bundle,
        task="topics",
        plan=FederationPlan(rounds=2, lr=5e-3, batch_size=16),
        train_per_task=240,
        test_per_task=60,
        out=out,
        threads=1,
        min_nodes=3,
        timeout_s=240.0,
    )
    project = new_project(tmp_path / "app", run).parent
    # Flower 1.42 serves the Fleet, Control and ServerApp APIs of a SuperLink on one HTTP port.
    link_port, *node_ports = free_ports(4)
    home = Path(processes.env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "e2e"\n\n' + connection_toml("e2e", f"127.0.0.1:{link_port}")
    )
    link = processes.start(
        "superlink",
        [
            tool("flower-superlink"),
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--host=127.0.0.1",
            f"--port={link_port}",
        ],
    )
    wait_for_port(link_port, link, 60)
    for i, port in enumerate(node_ports):
        processes.start(
            f"supernode-{i}",
            [
                tool("flower-supernode"),
                "--insecure",
                f"--superlink=127.0.0.1:{link_port}",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--node-config=partition-id={i} num-partitions=3",
                "--max-retries=20",
                "--max-wait-time=60",
            ],
        )

    # Execute: `flwr run` submits the app and streams its logs until the run ends
    try:
        done = subprocess.run(
            [tool("flwr"), "run", str(project), "e2e", "--stream"],
            env=processes.env,
            capture_output=True,
            timeout=420,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("flwr run did not finish in 420 s\n" + processes.tail())
    history_path = out / "topics" / "history.json"
    assert done.returncode == 0, (
        done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:] + processes.tail()
    )

    # Assert: two rounds of three clients, every round's module written, the module changed
    deadline = time.monotonic() + 30  # the ServerApp writes its last evaluation as the run ends
    while time.monotonic() < deadline and not (
        history_path.exists() and json.loads(history_path.read_text())["rounds"][-1]["accuracy"] is not None
    ):
        time.sleep(0.5)
    history = json.loads(history_path.read_text())
    assert [r["clients"] for r in history["rounds"]] == [[0, 1, 2], [0, 1, 2]], processes.tail()
    assert all(r["set_aside"] == [] and r["accuracy"] is not None for r in history["rounds"])
    bundle = open_bundle(tiny_bert_bundle)
    task = bundle.task("topics")
    before = initial_module(bundle, "topics")
    rounds = [
        decode_module((out / "topics" / f"round-{r:04d}.safetensors").read_bytes(), task) for r in (1, 2)
    ]
    assert any(not np.array_equal(rounds[0][k], before[k]) for k in before)
    assert any(not np.array_equal(rounds[1][k], rounds[0][k]) for k in before)


def _stop_local_superlink(home: Path) -> None:
    """`flwr run` starts a local simulation SuperLink detached from it; stop the one under `home`."""
    import psutil

    mine = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(home) in part for part in (p.info["cmdline"] or []))
        and "flower-superlink" in " ".join(p.info["cmdline"])
    ]
    for p in mine:
        children = p.children(recursive=True)
        for q in [p, *children]:
            with contextlib.suppress(psutil.Error):
                q.terminate()
        _, alive = psutil.wait_procs([p, *children], timeout=15)
        for q in alive:
            with contextlib.suppress(psutil.Error):
                q.kill()


def test_flwr_run_on_a_local_simulation_connection(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    # Prepare: the project `fedyolo flower new` writes, and a connection to Flower's local simulation
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "sim"\n\n' + connection_toml("sim", None, 12))
    http, control = free_ports(2)
    env = dict(os.environ) | {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out = tmp_path / "out"
    run = FlowerRun(
        bundle=tiny_bert_bundle,
        plan=FederationPlan(rounds=2),
        fraction=0.5,
        train_per_task=240,
        test_per_task=60,
        out=out,
        threads=1,
        min_nodes=12,
        timeout_s=240.0,
    )
    project = new_project(tmp_path / "app", run).parent

    # Execute
    try:
        done = subprocess.run(
            [tool("flwr"), "run", str(project), "sim", "--stream"],
            env=env,
            capture_output=True,
            timeout=420,
            cwd=tmp_path,
        )
    finally:
        _stop_local_superlink(home)

    # Assert: 12 virtual nodes, 6 a round, two rounds written
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    history = json.loads((out / "topics" / "history.json").read_text())
    assert history["clients"] == 12
    assert [len(r["clients"]) for r in history["rounds"]] == [6, 6]
    assert (out / "topics" / "round-0002.safetensors").is_file()
