"""Will a step fit? The checks a device makes before it runs: which backend a task was exported for,
how long a sequence the backbone takes, and whether a batch's activations fit in the memory available.

Plain Python and /proc: a phone or a Jetson runs this before it loads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedyolo.runtime.errors import BundleError, FedyoloError
from fedyolo.runtime.executorch_files import PROGRAM
from fedyolo.runtime.manifest import (
    CHECKPOINT,
    EVAL_MODEL,
    OPTIMIZER_MODEL,
    TRAINING_MODEL,
    Manifest,
    TaskSpec,
)

# The files a task needs on each backend: a task exported for one backend lacks the other's.
BACKEND_FILES: dict[str, tuple[str, ...]] = {
    "ort": (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT),
    "executorch": (PROGRAM,),
}
EXPORT_COMMANDS = {"ort": "fedyolo export onnx", "executorch": "fedyolo export executorch"}

# Bytes one fp32 transformer layer keeps for its backward, per token: Korthikanti et al. 2022
# ("Reducing Activation Recomputation in Large Transformer Models") count s*b*h*(34 + 5*a*s/h) bytes at
# 16 bits; fp32 doubles it. ORT's arena rounds buffers up and keeps the forward's temporaries too, so
# the estimate is a floor, used to refuse a batch that surely cannot fit, never to promise one will.
_BYTES_PER_HIDDEN = 34 * 2
_BYTES_PER_SCORE = 5 * 2


def task_backends(task: TaskSpec) -> list[str]:
    """The backends whose files the task holds (exported for)."""
    out = []
    for backend, needed in BACKEND_FILES.items():
        if all(
            any(name == f or (f.startswith(".") and name.endswith(f)) for name in task.files) for f in needed
        ):
            out.append(backend)
    return out


def check_backend(task: TaskSpec, backend: str) -> None:
    """A one-line BundleError when `task` was exported for another backend than `backend`."""
    have = task_backends(task)
    if backend in have:
        return
    exported = ", ".join(have) if have else "no backend fedyolo knows"
    raise BundleError(
        f"task {task.task_id!r} in this bundle was exported for {exported}, not {backend}; "
        f"use --backend {have[0] if have else 'ort'} or re-export it with `{EXPORT_COMMANDS.get(backend, 'fedyolo export')}`"
    )


def max_positions(manifest: Manifest) -> int:
    """The longest sequence the backbone takes: rows of its position embedding (0: no such limit)."""
    for t in manifest.backbone.tensors:
        if t.name.endswith("position_embeddings.weight"):
            return t.shape[0]
    return 0


def check_sequence(manifest: Manifest, seq: int) -> None:
    """A one-line error when `seq` tokens exceed what the backbone's position embedding holds."""
    longest = max_positions(manifest)
    if seq < 2:
        raise FedyoloError(
            f"a sequence of {seq} tokens leaves no room for [CLS] and [SEP]; use --seq 2 or more"
        )
    if longest and seq > longest:
        raise FedyoloError(
            f"a sequence of {seq} tokens is longer than backbone {manifest.backbone.id!r} allows "
            f"({longest} positions); use --seq {longest} or less"
        )


@dataclass(frozen=True)
class StepEstimate:
    """What a training step is expected to hold in memory, before it runs."""

    backbone_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.backbone_bytes + self.activation_bytes


def estimate_step(manifest: Manifest, batch: int, seq: int) -> StepEstimate:
    """A floor on a step's memory: the backbone plus the activations its backward keeps."""
    bb = manifest.backbone
    heads = max(1, bb.hidden_size // 64)  # BERT-style heads of 64 (MiniLM-L6: 384 / 64 = 6)
    tokens = batch * seq
    per_layer = tokens * (bb.hidden_size * _BYTES_PER_HIDDEN + heads * seq * _BYTES_PER_SCORE)
    return StepEstimate(bb.file.bytes, bb.num_layers * per_layer)


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable in bytes (Linux); 0 when it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_fits(manifest: Manifest, batch: int, seq: int, available: int | None = None) -> StepEstimate:
    """Refuse, before it runs, a batch whose step cannot fit in the memory available."""
    estimate = estimate_step(manifest, batch, seq)
    free = mem_available() if available is None else available
    if free and estimate.total > free:
        # the largest batch that fits at this length, by the same estimate
        per_example = estimate.activation_bytes / batch
        fits = int((free - estimate.backbone_bytes) // per_example) if free > estimate.backbone_bytes else 0
        fix = f"use --batch {fits} or less" if fits >= 1 else "use a shorter --seq"
        raise FedyoloError(
            f"batch {batch} x {seq} tokens needs at least {estimate.total / 2**20:,.0f} MiB "
            f"(backbone {estimate.backbone_bytes / 2**20:,.0f} + activations {estimate.activation_bytes / 2**20:,.0f}), "
            f"only {free / 2**20:,.0f} MiB is available; {fix}, or free memory"
        )
    return estimate
