"""The federated client against a real server (uvicorn on a thread), with an honest numpy trainer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.fedserver.synthetic import build_bundle, head_module
from fedyolo.runtime import client as client_module
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import FederationClient, PendingUpdate, Progress, status_command
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.fedprox import proximal_step
from fedyolo.runtime.http_transport import Connection, FederationError, RetryPolicy
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.trainer import Batch, EvalResult
from fedyolo.runtime.wire import ModuleWeights, check_module, decode_module

KEY = "client-test-enroll-key-01234"
LABELS, HIDDEN, VOCAB, SEQ = 5, 32, 200, 12
FAST = RetryPolicy(attempts=5, base_s=0.01, max_s=0.05)


class SoftmaxTrainer:
    """A linear softmax head over frozen features (mean of the backbone's token embeddings), trained by SGD.

    Honest: real gradients, the manifest's tensor names, the Trainer protocol's verbs.
    """

    def __init__(self, bundle: Bundle, task_id: str) -> None:
        self.task: TaskSpec = bundle.task(task_id)
        spec = bundle.manifest.backbone.tensors[0]
        self.embeddings = np.fromfile(bundle.backbone_path, dtype=np.float32).reshape(spec.shape)
        self.weights: ModuleWeights = {}
        self.lr = 0.1

    def _features(self, batch: Batch) -> np.ndarray:
        mask = batch["attention_mask"].astype(np.float32)[..., None]
        return (self.embeddings[batch["input_ids"]] * mask).sum(1) / mask.sum(1)

    def predict(self, batch: Batch) -> np.ndarray:
        return self._features(batch) @ self.weights["head.weight"].T + self.weights["head.bias"]

    def _loss_grad(self, batch: Batch) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        x = self._features(batch)
        logits = x @ self.weights["head.weight"].T + self.weights["head.bias"]
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        y = batch["labels"]
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        p[np.arange(len(y)), y] -= 1.0
        return loss, p / len(y), x, logits

    def step(self, batch: Batch) -> float:
        loss, g, x, _ = self._loss_grad(batch)
        self.weights["head.weight"] -= (self.lr * g.T @ x).astype(np.float32)
        self.weights["head.bias"] -= (self.lr * g.sum(0)).astype(np.float32)
        return loss

    def evaluate(self, batches: Iterable[Batch]) -> EvalResult:
        loss_sum, correct, n = 0.0, 0, 0
        for batch in batches:
            loss, _, _, logits = self._loss_grad(batch)
            loss_sum += loss * len(batch["labels"])
            correct += int((logits.argmax(1) == batch["labels"]).sum())
            n += len(batch["labels"])
        return EvalResult(loss=loss_sum / n, accuracy=correct / n, examples=n)

    def get_module(self) -> ModuleWeights:
        return {k: v.copy() for k, v in self.weights.items()}

    def set_module(self, weights: ModuleWeights) -> None:
        check_module(weights, self.task)
        self.weights = {k: v.astype(np.float32, copy=True) for k, v in weights.items()}

    def set_learning_rate(self, lr: float) -> None:
        self.lr = lr


def make_data(n: int, seed: int, label_probs: np.ndarray | None = None) -> Batch:
    """Each label owns a block of 40 tokens; an example draws ~85 % of its tokens from its label's block."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, size=n, p=label_probs)
    own = rng.integers(0, 40, size=(n, SEQ)) + 40 * labels[:, None]
    noise = rng.integers(0, VOCAB, size=(n, SEQ))
    ids = np.where(rng.random((n, SEQ)) < 0.85, own, noise)
    return {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((n, SEQ), dtype=np.int64),
        "labels": labels.astype(np.int64),
    }


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return build_bundle(
        tmp_path / "bundle", tasks={"topics": head_module(HIDDEN, LABELS)}, vocab=VOCAB, hidden=HIDDEN
    )


@pytest.fixture
def config(tmp_path: Path, bundle_dir: Path) -> ServerConfig:
    return ServerConfig(
        bundle_dir=bundle_dir,
        state_dir=tmp_path / "server",
        rounds=4,
        min_clients=3,
        local_epochs=3,
        lr=2.0,
        batch_size=16,
        enroll_key=KEY,
    )


def accuracy(bundle: Bundle, weights: ModuleWeights, data: Batch) -> float:
    trainer = SoftmaxTrainer(bundle, "topics")
    trainer.set_module(weights)
    return trainer.evaluate([data]).accuracy


def test_three_clients_federate_and_the_global_module_learns(tmp_path: Path, config: ServerConfig) -> None:
    # Prepare: skewed local data (each client mostly sees two labels), one cache for the device.
    skews = [np.array([0.45, 0.45, 0.04, 0.03, 0.03]), np.array([0.03, 0.04, 0.45, 0.45, 0.03]), None]
    datas = [make_data(120, seed=i, label_probs=p) for i, p in enumerate(skews)]
    test = make_data(400, seed=99)
    events: list[Progress] = []
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    with serve_in_thread(config) as url:

        def device(i: int) -> None:
            try:
                with FederationClient(
                    url, state_dir=tmp_path / f"client{i}", on_progress=events.append, retry=FAST
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


def test_requests_retry_with_exponential_backoff_until_the_server_is_up(
    tmp_path: Path, config: ServerConfig
) -> None:
    # Prepare: nothing listens yet; the third back-off starts the server on that port.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    stack = ExitStack()

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 3:
            stack.enter_context(serve_in_thread(config, port=port))

    conn = Connection(
        f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=6, base_s=0.1, max_s=1.0), sleep=sleep
    )
    # Execute
    with stack:
        answer = conn.json("GET", "/healthz")
    conn.close()
    # Assert
    assert answer == {"ok": True}
    assert len(delays) == 3
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2 and 0.2 <= delays[2] <= 0.4


def test_upload_retries_5xx_with_the_same_idempotency_key_and_gives_up_on_4xx() -> None:
    # Prepare: a server that fails twice, then accepts; and one that refuses.
    seen: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["idempotency-key"])
        if len(seen) < 3:
            return httpx.Response(503, json={"code": "internal", "detail": "busy"})
        return httpx.Response(201, json={"update_id": 1})

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"code": "invalid_update", "detail": "NaN"})

    pending = PendingUpdate("topics", 1, "key-abcdef12", 3, {}, "0" * 64)
    # Execute
    with FederationClient(
        "http://fed.test", state_dir=Path("/nonexistent/a"), retry=FAST, transport=httpx.MockTransport(flaky)
    ) as c:
        answer = c.upload(pending, b"body")
    with (
        FederationClient(
            "http://fed.test",
            state_dir=Path("/nonexistent/b"),
            retry=FAST,
            transport=httpx.MockTransport(refusing),
        ) as c,
        pytest.raises(FederationError) as refused,
    ):
        c.upload(pending, b"body")
    # Assert
    assert answer == {"update_id": 1}
    assert seen == ["key-abcdef12"] * 3
    assert refused.value.code == "invalid_update" and refused.value.status == 422


def test_bundle_sync_resumes_a_partial_download_and_fetches_each_file_once(
    tmp_path: Path, config: ServerConfig, bundle_dir: Path
) -> None:
    # Prepare: half of the backbone is already there from an interrupted download.
    backbone = (bundle_dir / "backbone" / "backbone.bin").read_bytes()
    cache = tmp_path / "cache"
    (cache / "backbone").mkdir(parents=True)
    (cache / "backbone" / "backbone.bin.part").write_bytes(backbone[: len(backbone) // 2])
    events: list[Progress] = []
    with (
        serve_in_thread(config) as url,
        FederationClient(url, state_dir=tmp_path / "c", on_progress=events.append) as c,
    ):
        c.register(KEY)
        # Execute
        first = c.sync_bundle(cache)
        fetched_first = [e for e in events if e.stage == "download"]
        events.clear()
        second = c.sync_bundle(cache)
    # Assert
    got = max(e.done for e in fetched_first if e.detail == "backbone/backbone.bin")
    assert got == len(backbone) - len(backbone) // 2  # only the missing half travelled
    assert (cache / "backbone" / "backbone.bin").read_bytes() == backbone
    assert not [e for e in events if e.stage == "download"]  # nothing travels twice
    assert first.manifest == second.manifest


def test_a_corrupt_partial_download_is_detected_and_fetched_again(
    tmp_path: Path, config: ServerConfig, bundle_dir: Path
) -> None:
    backbone = (bundle_dir / "backbone" / "backbone.bin").read_bytes()
    cache = tmp_path / "cache"
    (cache / "backbone").mkdir(parents=True)
    (cache / "backbone" / "backbone.bin.part").write_bytes(b"\xff" * 1000)  # wrong bytes
    with serve_in_thread(config) as url, FederationClient(url, state_dir=tmp_path / "c") as c:
        c.register(KEY)
        c.sync_bundle(cache)
    assert (cache / "backbone" / "backbone.bin").read_bytes() == backbone


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


def test_proximal_step_pulls_towards_the_global_module() -> None:
    w = {"a": np.array([1.0, -2.0], dtype=np.float32)}
    g = {"a": np.array([0.0, 0.0], dtype=np.float32)}
    out = proximal_step(w, g, lr=0.5, mu=0.2)
    np.testing.assert_allclose(out["a"], [0.9, -1.8])
    assert out["a"].dtype == np.float32
    np.testing.assert_array_equal(proximal_step(w, g, lr=0.5, mu=0.0)["a"], w["a"])
    with pytest.raises(ValueError):
        proximal_step(w, g, lr=0.5, mu=-1.0)


def test_fedprox_keeps_local_training_closer_to_the_global_module(bundle_dir: Path) -> None:
    # Prepare
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.client import train_round

    bundle = open_bundle(bundle_dir)
    task = bundle.task("topics")
    start = decode_module((bundle_dir / "tasks/topics/module.safetensors").read_bytes(), task)
    data = make_data(64, seed=3, label_probs=np.array([0.9, 0.1, 0, 0, 0]))
    info = {"batch_size": 16, "local_epochs": 3, "lr": 0.5}
    drift = {}
    for mu in (0.0, 1.0):
        trainer = SoftmaxTrainer(bundle, "topics")
        # Execute
        train_round(trainer, start, data, info | {"proximal_mu": mu}, np.random.default_rng(0))
        w = trainer.get_module()
        drift[mu] = np.sqrt(sum(((w[k] - start[k]) ** 2).sum() for k in w))
    # Assert
    assert drift[1.0] < 0.8 * drift[0.0]


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


def test_a_listing_that_points_outside_the_cache_is_refused(tmp_path: Path) -> None:
    # Prepare: a hostile server whose bundle listing names a file outside the bundle
    import httpx

    from fedyolo.runtime.client import FederationClient
    from fedyolo.runtime.http_transport import FederationError

    listing = {"files": [{"path": "../../escaped.txt", "sha256": "0" * 64, "bytes": 4}]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/bundle":
            return httpx.Response(200, json=listing)
        return httpx.Response(200, content=b"evil")

    client = FederationClient(
        "http://hostile", state_dir=tmp_path / "state", transport=httpx.MockTransport(handler)
    )

    # Execute / Assert
    with pytest.raises(FederationError, match="outside the bundle"):
        client.sync_bundle(tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()
