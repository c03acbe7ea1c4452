"""`fedyolo demo --chaos`: failures the run must survive, injected on purpose and shown in the summary.

- kill: one client process gets SIGKILL while it trains a round, and is started again with the same
  state dir. It is still registered (its token is on disk), the round waits for it, and it trains
  the round again: nothing was sent, so nothing is counted twice. The round closes with every client.
- NaN: an extra client, registered with its own token through the real HTTP API, uploads a module
  holding NaN. The server refuses it with a JSON error code before it can reach the average.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from safetensors.numpy import save as st_save

from fedyolo.demo.processes import Children
from fedyolo.demo.watch import ClientView
from fedyolo.runtime.client import FederationClient, PendingUpdate
from fedyolo.runtime.http_transport import FederationError, RetryPolicy
from fedyolo.runtime.manifest import TaskSpec

KILL_AT_PERCENT = 20  # well inside the round's training, past the download and the first steps
RESTART_AFTER_S = 1.0


@dataclass
class KillPlan:
    """Kill `client` once it trains round `round` (or a later one), then start it again."""

    client: str
    round: int
    done: bool = False

    def due(self, view: ClientView) -> bool:
        return (
            not self.done
            and view.name == self.client
            and view.stage == "train"
            and view.round >= self.round
            and view.percent >= KILL_AT_PERCENT
        )


def kill_and_restart(children: Children, view: ClientView, console: Console) -> list[dict[str, Any]]:
    """SIGKILL the client `view` shows, then start it again from its state dir; the two events."""
    children.kill(view.name)
    kill: dict[str, Any] = {
        "kind": "kill",
        "client": view.name,
        "task": view.task,
        "round": view.round,
        "percent": view.percent,
        "signal": "SIGKILL",
        "time": time.time(),
    }
    console.print(
        f"[yellow]chaos[/]: killed {view.name} (SIGKILL) at {view.percent} % of round {view.round}; "
        f"restarting it from its state dir"
    )
    view.stage = "killed"
    time.sleep(RESTART_AFTER_S)
    children.restart(view.name)
    view.stage = "starting"
    restart = {
        "kind": "restart",
        "client": view.name,
        "task": view.task,
        "round": view.round,
        "time": time.time(),
    }
    return [kill, restart]


def nan_update(url: str, enroll_key: str, task: TaskSpec, state_dir: Path) -> dict[str, Any]:
    """Register a client, download the current global module, put NaN in it, upload it; the answer.

    The body is written with safetensors directly: our own `encode_module` would refuse to send it.
    """
    with FederationClient(
        url, name="chaos-nan", state_dir=state_dir, retry=RetryPolicy(attempts=3, base_s=0.2)
    ) as client:
        client_id = client.register(enroll_key, "chaos-nan")
        info = client.current_round(task.task_id)
        weights = client.download_module(task, int(info["module_version"]))
        poisoned = next(t.name for t in task.trainable)
        weights[poisoned] = weights[poisoned].copy()
        weights[poisoned].flat[0] = np.nan
        body = st_save({name: np.ascontiguousarray(w, np.float32) for name, w in weights.items()})
        pending = PendingUpdate(task.task_id, int(info["round"]), uuid.uuid4().hex, 100, {}, "")
        event: dict[str, Any] = {
            "kind": "nan_update",
            "client": "chaos-nan",
            "client_id": client_id,
            "task": task.task_id,
            "round": int(info["round"]),
            "tensor": poisoned,
            "bytes": len(body),
            "time": time.time(),
        }
        try:
            answer = client.upload(pending, body)
        except FederationError as e:
            return {**event, "refused": True, "status": e.status, "code": e.code, "detail": e.detail}
        return {**event, "refused": False, "status": 201, "code": "accepted", "detail": str(answer)}
