"""Loading ONNX Runtime for training pulls in only what a device needs (memory is the device's budget)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from fedyolo.runtime.ort_import import load_ort
C = load_ort()
loaded = [m for m in ("torch", "onnx", "google.protobuf", "onnxruntime.training") if m in sys.modules]
print(json.dumps({"loaded": loaded, "training_api": all(hasattr(C, n) for n in ("Module", "Optimizer"))}))
"""


def test_load_ort_leaves_onnx_protobuf_and_the_training_package_unimported() -> None:
    # Execute: a fresh interpreter, as a device starts
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])

    # Assert: the training API is there, and none of what ORT's import validation used to drag in
    # (onnx, protobuf, ORT's model tools: +14 MiB resident, benchmarks/README.md levers)
    assert answer == {"loaded": [], "training_api": True}
