"""One CPU memory arena for every ONNX Runtime training session in the process.

By default each ORT session owns a CPU arena, and a task opens three (training, eval, optimizer): a
second resident task kept a second arena as large as the first, holding its steps' activations between
steps. One arena registered in ORT's environment and used by every session (`session.use_env_allocators`):
tasks train one at a time, so one task's step reuses the blocks the other's freed. Losses are
bit-identical: the arena decides where tensors live, not what is computed. Measured on the default
case (MiniLM, topics lora + language adapter, batch 8 x 32): benchmarks/README.md, `resident.py`.

The arena keeps ORT's default growth (next power of two). `kSameAsRequested` fragments it when batch
lengths vary (length bucketing): one task 250 MB against 234; `max_dead_bytes_per_chunk` 0 corrupts
ORT 1.19's arena (a crash in BFCArena).
"""

from __future__ import annotations

import threading
from typing import Any

from fedyolo.runtime.ort_import import load_ort

_lock = threading.Lock()
_registered = False


def register_shared_arena() -> None:
    """Register the process's one shared CPU arena in ORT's environment (once; later calls do nothing)."""
    global _registered
    with _lock:
        if _registered:
            return
        C = load_ort()
        info = C.OrtMemoryInfo("Cpu", C.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, C.OrtMemType.DEFAULT)
        C.create_and_register_allocator(info, C.OrtArenaCfg({}))  # ORT's defaults: see the docstring
        _registered = True


def use_shared_arena(options: Any) -> None:
    """Make the sessions built from `options` allocate from the shared arena instead of their own."""
    register_shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
