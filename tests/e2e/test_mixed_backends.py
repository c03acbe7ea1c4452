"""One federation, two backends: an ONNX Runtime client and an ExecuTorch client train the same task
against the same server, and the round folds both updates into one module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fedyolo.tasks import load_task, write_examples
from tests.test_cli_federation import KEY, free_port, wait_until_serving

pytest.importorskip("executorch", reason="the 'executorch' extra is not installed (make setup installs it)")


@pytest.mark.slow
def test_an_ort_and_an_executorch_client_share_one_round(tmp_path: Path) -> None:
    # Arrange: a bundle with both backends for `topics`, a server that waits for two updates
    from fedyolo.export.executorch_bundle import export_executorch

    task = load_task("topics")
    export_executorch(tmp_path / "bundle", "topics", task.labels, backbone="tiny-bert", module="head",
                      max_length=16, batch=8, show_progress=False)  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FEDYOLO_HOME": str(tmp_path / "home")}
    server = subprocess.Popen(
        [sys.executable, "-m", "fedyolo.cli", "serve", str(tmp_path / "bundle"), "--port", str(port),
         "--rounds", "1", "--min-clients", "2", "--enroll-key", KEY, "--state-dir", str(tmp_path / "state"),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    clients = []
    try:
        wait_until_serving(server, url)

        # Act
        for i, backend in enumerate(("ort", "executorch")):
            data = write_examples(task.train[40 * i : 40 * (i + 1)], tmp_path / f"{backend}.jsonl")
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "fedyolo.cli", "client", url, "--task", "topics", "--data", str(data),
                 "--enroll-key", KEY, "--threads", "1", "--name", backend, "--backend", backend,
                 "--state-dir", str(tmp_path / backend), "--rounds", "1"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            ))  # fmt: skip
        outputs = [c.communicate(timeout=400) for c in clients]
        status = httpx.get(f"{url}/v1/status", timeout=10)
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        server.terminate()
        server.wait(timeout=30)

    # Assert: both clients' updates accepted into the one round
    for c, (_, err) in zip(clients, outputs, strict=True):
        assert c.returncode == 0, err[-2000:]
        assert "1 updates accepted for task 'topics'" in err
    assert status.status_code == 200, status.text
    (topics,) = status.json()["tasks"]
    assert topics["rounds_committed"] == 1 and topics["updates_total"] == 2 and topics["clients"] == 2
