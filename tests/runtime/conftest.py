"""Fixtures for the client tests: a synthetic bundle and server config, an honest numpy trainer, its data."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.http_transport import RetryPolicy
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.trainer import Batch, EvalResult, ExampleArrays
from fedyolo.runtime.wire import ModuleWeights, check_module
from tests.synthetic import build_bundle, head_module

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


def make_data(n: int, seed: int, label_probs: np.ndarray | None = None) -> ExampleArrays:
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
        plan=FederationPlan(rounds=4, local_epochs=3, lr=2.0, batch_size=16),
        min_clients=3,
        enroll_key=KEY,
    )
