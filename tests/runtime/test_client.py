"""The federated client against a real server (uvicorn on a thread), with an honest numpy trainer: rounds
learn, a killed client re-sends its update once, clients of one machine keep apart, the status table."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedyolo.cli.client import status_command
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.runtime import client as client_module
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import FederationClient, PendingUpdate
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.events import ClientEvent
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.runtime.wire import ModuleWeights

from .conftest import FAST, KEY, SoftmaxTrainer, make_data


def accuracy(bundle: Bundle, weights: ModuleWeights, data: ExampleArrays) -> float:
    trainer = SoftmaxTrainer(bundle, "topics")
    trainer.set_module(weights)
    return trainer.evaluate([data]).accuracy


def test_three_clients_federate_and_the_global_module_learns(tmp_path: Path, config: ServerConfig) -> None:
    # Prepare: skewed local data (each client mostly sees two labels), one cache for the device.
    skews = [np.array([0.45, 0.45, 0.04, 0.03, 0.03]), np.array([0.03, 0.04, 0.45, 0.45, 0.03]), None]
    datas = [make_data(120, seed=i, label_probs=p) for i, p in enumerate(skews)]
    test = make_data(400, seed=99)
    events: list[ClientEvent] = []
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    with serve_in_thread(config) as url:

        def device(i: int) -> None:
            try:
                with FederationClient(
                    url, state_dir=tmp_path / f"client{i}", on_event=events.append, retry=FAST
                ) as c:
                    c.register(KEY)
                    bundle = c.sync_bundle(tmp_path / "cache", tasks=["topics"])
                    results[i] = c.run(
                        "topics", SoftmaxTrainer, datas[i], bundle=bundle, long_poll_s=2.0, max_wait_s=30
                    )
            except BaseException as e:  # surfaced below
                errors.append(e)

        # Execute
        threads = [threading.Thread(target=device, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        with FederationClient(url, state_dir=tmp_path / "client0") as c:
            bundle = c.sync_bundle(tmp_path / "cache")
            task = bundle.task("topics")
            first, last = c.download_module(task, 0), c.download_module(task, 4)
            history = c.history("topics")
    # Assert
    assert not errors, errors
    assert all(len([r for r in results[i] if r.outcome == "accepted"]) == 4 for i in range(3))
    assert [h["updates"] for h in history] == [3, 3, 3, 3]
    before, after = accuracy(bundle, first, test), accuracy(bundle, last, test)
    assert before < 0.4 and after > 0.75, (before, after)  # 5 labels: chance is 0.2
    backbone_fetches = {
        e.done for e in events if e.stage == "download" and e.detail == "backbone/backbone.bin"
    }
    assert max(backbone_fetches) == bundle.manifest.backbone.file.bytes  # fetched in full ...
    assert (
        sum(1 for e in events if e.stage == "download" and e.done == e.total and "backbone" in e.detail) == 1
    )


def test_a_client_killed_before_or_after_sending_resends_the_same_update_once(
    tmp_path: Path, config: ServerConfig
) -> None:
    # Prepare: round 1 needs three clients, so it stays open while this one crashes and restarts.
    data = make_data(60, seed=1)
    state = tmp_path / "client"

    class Crash(Exception):
        pass

    with serve_in_thread(config) as url:
        with FederationClient(url, state_dir=state, retry=FAST) as c:
            c.register(KEY)
            bundle = c.sync_bundle(tmp_path / "cache")
            c.upload = lambda pending, body: (_ for _ in ()).throw(Crash())  # type: ignore[method-assign]
            # Execute 1: killed after training, before the upload left the device
            with pytest.raises(Crash):
                c.run("topics", SoftmaxTrainer, data, bundle=bundle)
        saved = client_module.ClientState(state).pending("topics")
        assert saved is not None
        pending, body = saved
        with FederationClient(url, state_dir=state, retry=FAST) as c:
            real_upload = c.upload

            def upload_then_die(p: PendingUpdate, b: bytes) -> dict[str, Any]:
                real_upload(p, b)  # the server has it; the answer is lost with the process
                raise Crash()

            c.upload = upload_then_die  # type: ignore[method-assign]
            # Execute 2: restarted; killed after the server accepted but before the client recorded it
            with pytest.raises(Crash):
                c.run("topics", SoftmaxTrainer, data, bundle=bundle, rounds=1)
        with FederationClient(url, state_dir=state, retry=FAST) as c:
            # Execute 3: restarted again; the same key gets the first answer
            results = c.run("topics", SoftmaxTrainer, data, bundle=bundle, rounds=1)
            info = c.current_round("topics")
    server_rows = _updates(config)
    # Assert
    assert [r.outcome for r in results] == ["accepted"]
    assert info["round"] == 1 and info["updates"] == 1
    assert server_rows == [(pending.idempotency_key, pending.sha256)]
    assert client_module.ClientState(state).pending("topics") is None
    assert client_module.ClientState(state).last_submitted("topics") == 1
    assert len(body) > 0


def _updates(config: ServerConfig) -> list[tuple[str, str]]:
    import sqlite3

    db = sqlite3.connect(config.state_dir / "fedserver.sqlite3")
    rows = db.execute("SELECT idempotency_key, blob FROM updates").fetchall()
    db.close()
    return [tuple(r) for r in rows]


def test_clients_on_one_machine_keep_their_own_state(
    tmp_path: Path, config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "FEDYOLO_HOME", tmp_path / "home")
    with serve_in_thread(config) as url:
        with FederationClient(url, name="phone-a") as a, FederationClient(url, name="phone-b") as b:
            ids = (a.register(KEY), b.register(KEY))
        with FederationClient(url, name="phone-a") as a, FederationClient(url, name="phone-b") as b:
            again = (a.register(KEY), b.register(KEY))  # registered once: kept, not re-registered
        creds = [
            json.loads((tmp_path / "home" / "clients" / n / "credentials.json").read_text())
            for n in ("phone-a", "phone-b")
        ]
        with pytest.raises(FedyoloError, match="belongs to"):
            FederationClient("http://127.0.0.1:1", name="phone-a")
    assert ids == again and ids[0] != ids[1]
    assert creds[0]["token"] != creds[1]["token"]
    assert oct((tmp_path / "home" / "clients" / "phone-a" / "credentials.json").stat().st_mode)[-3:] == "600"


def test_status_command_prints_rounds_clients_and_bytes(
    tmp_path: Path, config: ServerConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_in_thread(replace(config, min_clients=1)) as url:
        with FederationClient(url, state_dir=tmp_path / "c", retry=FAST) as c:
            c.register(KEY)
            c.run("topics", SoftmaxTrainer, make_data(40, seed=5), cache_dir=tmp_path / "cache", rounds=1)
        status_command(url)
    out = capsys.readouterr().out
    assert "topics" in out and "1 clients registered" in out and "MB" in out
