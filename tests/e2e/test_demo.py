"""`fedyolo demo` as a user runs it: the real server and client processes over HTTP, both tasks, with a
client killed mid-round and a client that uploads NaN. The run finishes, the summary shows both
failures, the results are saved, and no process is left behind — not even after a Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# Small and fast: tiny BERT, 3 clients, 3 rounds (the kill aims at round 2; round 3 is its second chance),
# 2 local epochs so that a round's training lasts long enough to be caught in the middle.
DEMO = [
    "demo", "--backbone", "tiny-bert", "--clients", "3", "--rounds", "3", "--local-epochs", "2",
    "--max-length", "16", "--train-per-task", "900", "--test-per-task", "300", "--lr", "5e-3",
]  # fmt: skip


def fedyolo(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fedyolo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (the demo's children all do)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(path) in cmdline and p.pid != os.getpid():
            found.append(cmdline)
    return found


@pytest.mark.slow
def test_demo_with_chaos_finishes_and_reports_what_failed(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "demo"

    # Execute
    done = fedyolo(*DEMO, "--chaos", "--out", out)

    # Assert: the run finished, every round of both tasks closed with every client
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["failures"] == []
    for task in ("topics", "language"):
        rounds = result["tasks"][task]["rounds"]
        assert [r["updates"] for r in rounds[1:]] == [3, 3, 3]
        assert all(r["accuracy"] is not None for r in rounds)  # held-out accuracy of every global module
        assert len(result["tasks"][task]["local"]) == 3  # the fully-local baseline, one per client
        assert result["tasks"][task]["bytes"]["ratio"] > 100
    # the client killed mid-round came back and its round still closed with everyone
    kill = next(e for e in result["chaos"] if e["kind"] == "kill")
    assert kill["client"] == "topics-1" and kill["round"] >= 2 and 0 < kill["percent"] < 100
    assert any(e["kind"] == "restart" and e["client"] == "topics-1" for e in result["chaos"])
    # the NaN update was refused with the API's error code, and never counted
    nan = next(e for e in result["chaos"] if e["kind"] == "nan_update")
    assert nan["refused"] and nan["status"] == 422 and nan["code"] == "invalid_update"
    # training language did not touch the topics module
    iso = result["isolation"]
    assert iso["sha256_before"] == iso["sha256_after"]
    assert iso["accuracy_before"] == iso["accuracy_after"] and iso["backbone_unchanged"]
    # what a person reads
    summary = (out / "summary.txt").read_text()
    for words in (
        "SIGKILL",
        "topics-1",
        "chaos-nan",
        "invalid_update",
        "fully-local baseline",
        "bit-identical",
    ):
        assert words in summary, words
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert processes_using(out) == []


@pytest.mark.slow
def test_ctrl_c_stops_every_process_of_the_demo(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}
    long_demo = [("40" if DEMO[i - 1] == "--rounds" else a) for i, a in enumerate(DEMO)]
    demo = subprocess.Popen(
        # 40 rounds: on a quiet machine the 3-round demo can end before the signal lands (exit 0)
        [sys.executable, "-m", "fedyolo.cli", *long_demo, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # Ctrl-C as a terminal delivers it: a test run started in the background (`cmd &` in a
        # non-interactive shell) passes SIGINT down ignored, and Python keeps an ignored SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while len(processes_using(out)) < 5 and time.monotonic() < deadline:  # server, clients, workers
            time.sleep(0.2)
        assert len(processes_using(out)) >= 5

        # Execute
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()

    # Assert
    assert demo.returncode != 0
    time.sleep(0.5)
    assert processes_using(out) == []
