"""The device side of a federation: register once, fetch the bundle once, then round after round:
get the round → download the global module → train `local_epochs` → upload the new weights.

Crash-safe by construction: the token, the update waiting to be sent (with its idempotency key) and
the last round sent live in a state directory per client (default `~/.fedyolo/clients/<name>`), so
a restarted client re-sends the same update under the same key and the server counts it once
(client_state.py). A round's local training is `train_round` (local.py); it, `ClientState` and
`PendingUpdate` are re-exported here. Plain numpy + httpx: no torch, no fastapi.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.client_state import ClientState as ClientState
from fedyolo.runtime.client_state import PendingUpdate as PendingUpdate
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.events import ClientEvent
from fedyolo.runtime.http_transport import Connection, FederationError, RetryPolicy, error_of
from fedyolo.runtime.local import train_round as train_round
from fedyolo.runtime.manifest import FileEntry, TaskSpec, sha256_file
from fedyolo.runtime.plan import RoundPlan
from fedyolo.runtime.trainer import ExampleArrays, Trainer
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module

log = logging.getLogger(__name__)

TrainerFactory = Callable[[Bundle, str], Trainer]
FEDYOLO_HOME = Path(os.environ.get("FEDYOLO_HOME", Path.home() / ".fedyolo"))
MODULE_HEADER_ROOM = 1024  # bytes of safetensors header allowed per tensor (and once more for the rest)


@dataclass(frozen=True)
class RoundResult:
    """A round this client took part in."""

    task_id: str
    round: int
    outcome: str  # accepted | stale (the round closed before it arrived) | set_aside (by the server's fold)
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class FederationClient:
    """One client of one server. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str,
        name: str = "default",
        state_dir: str | os.PathLike[str] | None = None,
        verify: bool | str | os.PathLike[str] = True,
        retry: RetryPolicy | None = None,
        on_event: Callable[[ClientEvent], None] | None = None,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.state = ClientState(
            Path(state_dir) if state_dir is not None else FEDYOLO_HOME / "clients" / name
        )
        self.conn = Connection(
            self.url, verify=verify, timeout_s=timeout_s, retry=retry, sleep=sleep, transport=transport
        )
        self.sleep = sleep
        self.on_event = on_event or (
            lambda e: log.info("%s %s round %d: %s", e.stage, e.task_id, e.round, e.detail)
        )
        creds = self.state.credentials()
        if creds is not None:
            if creds["url"] != self.url:
                raise FedyoloError(
                    f"client state {self.state.root} belongs to {creds['url']}, not {self.url}; "
                    "give this server another client name or state dir"
                )
            self.conn.token = creds["token"]

    def __enter__(self) -> FederationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @property
    def registered(self) -> bool:
        return self.conn.token is not None

    def register(self, enroll_key: str, name: str = "") -> int:
        """Register with the enrollment key once; the token is kept in the state dir (mode 0600)."""
        if self.registered:
            return int((self.state.credentials() or {})["client_id"])
        body = self.conn.json(
            "POST", "/v1/clients", json={"enroll_key": enroll_key, "name": name or self.state.root.name}
        )
        self.state.save_credentials(self.url, body["client_id"], body["token"])
        self.conn.token = body["token"]
        return int(body["client_id"])

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.conn.json("GET", "/v1/tasks")["tasks"])

    def current_round(self, task_id: str, newer_than: int = 0, wait_s: float = 0.0) -> dict[str, Any]:
        """The task's round; with `wait_s`, the server holds the answer until a round newer than
        `newer_than` is open or the task is finished (long poll, no busy polling)."""
        params = {"newer_than": newer_than, "wait_s": wait_s} if wait_s > 0 else {}
        return dict(self.conn.json("GET", f"/v1/tasks/{task_id}/round", params=params))

    def history(self, task_id: str) -> list[dict[str, Any]]:
        return list(self.conn.json("GET", f"/v1/tasks/{task_id}/history")["rounds"])

    def sync_bundle(
        self, cache_dir: str | os.PathLike[str] | None = None, tasks: list[str] | None = None
    ) -> Bundle:
        """Download what is missing or changed (resuming partial files), check every sha256, open the bundle.

        The cache is per device and per server (default `~/.fedyolo/bundles/<host_port>`): a file already
        there with the right hash is never fetched again — the backbone travels once.
        """
        cache = Path(cache_dir) if cache_dir is not None else FEDYOLO_HOME / "bundles" / _url_key(self.url)
        listing = self.conn.json("GET", "/v1/bundle")["files"]
        wanted = [
            f for f in listing
            if not f["path"].startswith("tasks/") or tasks is None or f["path"].split("/")[1] in tasks
        ]  # fmt: skip
        wanted.sort(key=lambda f: f["path"] == "manifest.json")  # the manifest last
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # clients of one device share the cache: one writer at a time
            checked = self._fetch_missing(cache, wanted)
        # Every file was hashed just now (or checked as it arrived): open_bundle need not read it again.
        return open_bundle(cache, tasks=tasks, checked=checked)

    def _fetch_missing(self, cache: Path, wanted: list[dict[str, Any]]) -> dict[str, str]:
        """Fetch what the cache lacks; returns every wanted file's path and the sha256 it was checked to have."""
        root = cache.resolve()
        checked: dict[str, str] = {}
        for f in wanted:
            entry, dest = FileEntry(sha256=f["sha256"], bytes=f["bytes"]), cache / f["path"]
            if Path(f["path"]).is_absolute() or not dest.resolve().is_relative_to(root):
                # a hostile or broken server must not make the client write outside its cache
                raise FederationError(
                    "bad_listing", f"the server listed a file outside the bundle: {f['path']!r}"
                )
            checked[f["path"]] = entry.sha256
            if dest.is_file() and dest.stat().st_size == entry.bytes and sha256_file(dest) == entry.sha256:
                continue
            got = [0]

            def on_bytes(
                n: int, path: str = f["path"], total: int = entry.bytes, got: list[int] = got
            ) -> None:
                got[0] += n
                self.on_event(ClientEvent("download", "", 0, path, got[0], total))

            self.conn.download(f"/v1/bundle/files/{f['path']}", dest, entry, on_bytes)  # checks the sha256
        return checked

    def download_module(self, task: TaskSpec, version: int) -> ModuleWeights:
        """A global module version, checked against the manifest and its ETag."""
        # fp32 tensors plus room for the safetensors header: a larger answer is not this module
        cap = task.module_bytes + MODULE_HEADER_ROOM * (1 + len(task.trainable))
        response = self.conn.get_capped(f"/v1/tasks/{task.task_id}/modules/{version}", cap)
        if response.status_code != 200:
            raise error_of(response)
        etag = response.headers.get("etag", "").strip('"')
        if etag and hashlib.sha256(response.content).hexdigest() != etag:
            raise FederationError(
                "bad_download", f"module version {version} of {task.task_id!r} arrived damaged"
            )
        return decode_module(response.content, task)

    def upload(self, pending: PendingUpdate, body: bytes) -> dict[str, Any]:
        """Send an update (retrying under the same idempotency key); returns the server's answer."""
        response = self.conn.request(
            "POST",
            f"/v1/tasks/{pending.task_id}/rounds/{pending.round}/updates",
            content=body,
            headers={
                "content-type": "application/octet-stream",
                "idempotency-key": pending.idempotency_key,
                "fedyolo-examples": str(pending.examples),
                "fedyolo-metrics": json.dumps(pending.metrics),
            },
        )
        if response.status_code != 201:
            raise error_of(response)
        return dict(response.json())

    def run(
        self,
        task_id: str,
        trainer_factory: TrainerFactory,
        data: ExampleArrays,
        rounds: int | None = None,
        bundle: Bundle | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        eval_data: ExampleArrays | None = None,
        long_poll_s: float = 25.0,
        max_wait_s: float | None = None,
        seed: int = 0,
    ) -> list[RoundResult]:
        """Take part in rounds of `task_id` until the task is finished or `rounds` updates were accepted.

        `data` holds every local example (arrays with a leading example axis, `labels` among them).
        Waits for the other clients between rounds with long polls of `long_poll_s`, at most `max_wait_s`
        in all between two rounds (None: forever).
        """
        bundle = bundle or self.sync_bundle(cache_dir, tasks=[task_id])
        task = bundle.task(task_id)
        trainer = trainer_factory(bundle, task_id)
        rng = np.random.default_rng([seed, self.state.last_submitted(task_id)])
        results: list[RoundResult] = []
        waited_since: float | None = None
        while rounds is None or len([r for r in results if r.outcome == "accepted"]) < rounds:
            info = self.current_round(task_id, self.state.last_submitted(task_id), long_poll_s)
            r = _round_of(info)
            if info.get("status") == "finished":
                self.on_event(ClientEvent("done", task_id, r, f"every round of {task_id!r} is done"))
                break
            if info["status"] != "open" or self.state.last_submitted(task_id) >= r:
                waited_since = waited_since or time.monotonic()
                if max_wait_s is not None and time.monotonic() - waited_since > max_wait_s:
                    raise FederationError(
                        "timeout", f"round {r} of {task_id!r} did not move for {max_wait_s:.0f} s"
                    )
                self.on_event(ClientEvent("wait", task_id, r, f"round {r} is {info['status']}; waiting"))
                continue
            waited_since = None
            saved = self.state.pending(task_id)
            if saved is not None and saved[0].round != r:
                self.state.drop_pending(task_id)  # trained for a round that closed while we were away
                saved = None
            if saved is None:
                module_version = info.get("module_version")
                if isinstance(module_version, bool) or not isinstance(module_version, int):
                    raise FederationError(
                        "bad_round", f"the server's round {r} names no module version ({module_version!r})"
                    )
                plan = RoundPlan.from_json(info)
                saved = self._train(task, trainer, data, plan, module_version, rng, eval_data)
            pending, body = saved
            self.on_event(
                ClientEvent("upload", task_id, r, f"{len(body)} bytes, key {pending.idempotency_key[:8]}")
            )
            try:
                answer = self.upload(pending, body)
                outcome = "accepted"
                log.debug("round %d accepted: %s", r, answer)
            except FederationError as e:
                if e.code not in ("stale_round", "already_submitted", "task_finished", "update_quarantined"):
                    if e.status and e.status < 500:
                        self.state.drop_pending(task_id)  # the server will never take this one
                    raise
                outcome = {"already_submitted": "accepted", "update_quarantined": "set_aside"}.get(
                    e.code, "stale"
                )
            if outcome in ("accepted", "set_aside"):
                self.state.mark_submitted(task_id, r)
            self.state.drop_pending(task_id)
            results.append(RoundResult(task_id, r, outcome, pending.examples, pending.metrics))
            self.on_event(
                ClientEvent(
                    "round",
                    task_id,
                    r,
                    f"update {outcome}; metrics {pending.metrics}",
                    outcome=outcome,
                    metrics=dict(pending.metrics),
                )
            )
        return results

    def _train(
        self,
        task: TaskSpec,
        trainer: Trainer,
        data: ExampleArrays,
        plan: RoundPlan,
        module_version: int,
        rng: np.random.Generator,
        eval_data: ExampleArrays | None,
    ) -> tuple[PendingUpdate, bytes]:
        r = plan.round
        global_weights = self.download_module(task, module_version)

        def on_step(done: int, total: int, loss: float) -> None:
            self.on_event(ClientEvent("train", task.task_id, r, f"loss {loss:.4f}", done, total))

        examples, metrics = train_round(trainer, global_weights, data, plan, rng, eval_data, on_step)
        body = encode_module(trainer.get_module(), task)
        pending = PendingUpdate(
            task.task_id, r, uuid.uuid4().hex, examples, metrics, hashlib.sha256(body).hexdigest()
        )
        self.state.save_pending(pending, body)  # from here on a crash re-sends this exact update
        return pending, body


def _round_of(info: dict[str, Any]) -> int:
    """The round number of a server's answer, checked: a broken server must not crash the client later."""
    r = info.get("round")
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise FederationError("bad_round", f"the server's round answer has no valid round number ({r!r})")
    return r


def _url_key(url: str) -> str:
    parts = urlsplit(url)
    return (parts.hostname or "server") + (f"_{parts.port}" if parts.port else "")
