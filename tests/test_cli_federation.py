"""`fedyolo serve`, `fedyolo client` and `fedyolo status` as a user runs them, in separate processes:
a server over a tiny bundle, one client that trains a round on its own file (and tells its supervisor
what it does as JSON lines), and the status table."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fedyolo.tasks import load_task, write_examples

KEY = "a-test-enrollment-key-0001"


def fedyolo(*args: str | Path, home: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI; FEDYOLO_HOME keeps its bundle cache and client state out of the user's home."""
    env = {**os.environ, "COLUMNS": "150", "FEDYOLO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "fedyolo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(server: subprocess.Popen[str], url: str, timeout_s: float = 60) -> None:
    """Poll `url`/healthz until it answers 200; fail if the server process exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def test_help_lists_the_federation_commands(tmp_path: Path) -> None:
    done = fedyolo("--help", home=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("serve", "client", "status", "demo", "simulate"):
        assert command in done.stdout


def test_serve_client_status_over_http(tmp_path: Path) -> None:
    # Prepare: a one-task tiny bundle, a server needing one update for its one round, a client's data
    from fedyolo.export.pipeline import export_onnx

    task = load_task("topics")
    export_onnx(
        tmp_path / "bundle", "topics", task.labels, backbone="tiny-bert", max_length=16, show_progress=False
    )
    data = write_examples(task.train[:40], tmp_path / "mine.jsonl")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "fedyolo.cli", "serve", str(tmp_path / "bundle"), "--port", str(port),
         "--rounds", "1", "--min-clients", "1", "--enroll-key", KEY, "--state-dir", str(tmp_path / "state"),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until_serving(server, url)

        # Execute
        client = fedyolo(
            "client", url, "--task", "topics", "--data", data, "--enroll-key", KEY, "--threads", "1",
            "--state-dir", tmp_path / "client", "--events", tmp_path / "events.jsonl", home=tmp_path,
        )  # fmt: skip
        status = fedyolo("status", url, home=tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)

    # Assert
    assert client.returncode == 0, client.stderr[-2000:]
    assert "1 updates accepted for task 'topics'" in client.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert all({"stage", "task", "round", "detail", "done", "total", "time"} <= set(e) for e in events)
    stages = [e["stage"] for e in events]
    assert stages[0] == "register" and "download" in stages and stages[-1] == "done"
    train = [e for e in events if e["stage"] == "train"]
    assert train and train[-1]["done"] == train[-1]["total"] > 0 and train[-1]["round"] == 1
    (finished,) = [e for e in events if e["stage"] == "round"]
    assert finished["outcome"] == "accepted" and "train_loss" in finished["metrics"]
    assert status.returncode == 0, status.stderr
    assert "topics" in status.stdout and "finished" in status.stdout


def test_serve_and_simulate_refuse_a_plan_that_cannot_run_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    for command in (["serve", str(tmp_path)], ["simulate", "--out", str(tmp_path)]):
        result = subprocess.run(
            [sys.executable, "-m", "fedyolo.cli", *command, "--aggregate", "mode"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0, command
        lines = result.stderr.strip().splitlines()
        assert lines == ["error: unknown aggregate 'mode'; choose one of mean, median, trimmed_mean"], command
