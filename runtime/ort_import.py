"""Import ONNX Runtime's training core without torch.

The onnxruntime-training wheel imports torch from `import onnxruntime` whenever torch is installed
(onnxruntime_validation → training → ortmodule: +257 MB RSS, +1.4 s), and
`onnxruntime/training/__init__.py` imports torch outright. The training API itself lives in the
compiled `_pybind_state`; this module reaches it with torch hidden for the duration of the import.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any


def load_ort() -> ModuleType:
    """`onnxruntime.capi._pybind_state` (CheckpointState, Module, Optimizer, OrtValue, SessionOptions)."""
    if "onnxruntime.capi._pybind_state" in sys.modules:
        loaded: ModuleType = sys.modules["onnxruntime.capi._pybind_state"]
        loaded.set_default_logger_severity(3)
        return loaded
    hidden: dict[str, Any] = {}
    # A None entry makes `import torch` raise ImportError, which ORT's validation tolerates. Hiding
    # onnxruntime.training too spares the validation's attempt at it, which imported onnx, protobuf and
    # ORT's model tools before failing at torch: 232 modules, +14 MiB resident (benchmarks/README.md,
    # levers). The device needs none of them; export imports the package normally afterwards.
    for name in ("torch", "onnxruntime.training"):
        if name not in sys.modules:
            hidden[name] = sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.capi import _pybind_state
    finally:
        for name in hidden:
            if sys.modules.get(name) is None:
                del sys.modules[name]
    _pybind_state.set_default_logger_severity(3)
    module: ModuleType = _pybind_state
    return module
