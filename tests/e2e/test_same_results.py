"""The same seed gives the same results, whatever the code around them becomes: the clients' shares, the
exported module and a short federation on tiny BERT are pinned to what they were before the demo's
library code moved (2026-11-29).

The shares and the initial module come from seeded numpy and torch alone: they must match bit for bit.
The federated figures also go through ONNX Runtime's CPU kernels, which round differently on different
instruction sets: recorded on x86-64 with AVX2, the first train loss came out 3.034240785 on an AVX-512
Xeon (2026-11-30), a relative 1.2e-8 off. So the losses are compared to within a relative 1e-6 and the
accuracy exactly: a learning rate 1% higher (5.05e-3) moves the first train loss by a relative 7e-4.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedyolo.tasks.shares import share_task

SHARES_SHA256 = "6de8fba55ded170d8d38efed59743e1c9d7c9f1886b3a75d205f6526ef2f984a"
INITIAL_MODULE_SHA256 = "6273b3533dbb1a1fe88c109b6fd3e962fac94840319de058c61b334234bf5b2a"
# (train loss, held-out accuracy, held-out loss) per round, as `fedyolo simulate` saved them. The train
# losses moved in the 8th digit (3.034240798 -> 3.034240823) when the GELU backward became stock ops
# (export/gelu_grad.py: other float rounding); held-out figures did not move.
ROUNDS = [
    (3.03424082294343, 0.02, 3.0171226501464843),
    (2.7787635818360346, 0.12, 2.806908588409424),
]


def test_shares_are_the_same_for_the_same_seed() -> None:
    shares = share_task("topics", 3, 1.0, 0, 300, 100)

    rows = [[[e.text, e.label] for e in s] for s in shares.shares] + [
        [[e.text, e.label] for e in shares.test]
    ]
    assert [len(s) for s in shares.shares] == [94, 104, 102]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == SHARES_SHA256


def test_a_short_federation_gives_the_same_module_and_figures(tmp_path: Path) -> None:
    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "fedyolo.cli", "simulate", "--backbone", "tiny-bert", "--tasks", "topics",
         "--clients", "3", "--fraction", "1", "--rounds", "2", "--local-epochs", "1", "--max-length", "16",
         "--train-per-task", "300", "--test-per-task", "100", "--eval-every", "1", "--lr", "5e-3",
         "--batch-size", "16", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    module = tmp_path / "bundle" / "tasks" / "topics" / "module.safetensors"
    assert hashlib.sha256(module.read_bytes()).hexdigest() == INITIAL_MODULE_SHA256
    rounds = json.loads((tmp_path / "simulate.json").read_text())["tasks"]["topics"]["rounds"]
    got = [(r["train_loss"], r["accuracy"], r["loss"]) for r in rounds]
    assert got == [pytest.approx(expected, rel=1e-6) for expected in ROUNDS]
    assert [r[1] for r in got] == [r[1] for r in ROUNDS]
