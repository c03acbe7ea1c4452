"""What the demo measured per task: held-out accuracy per round beside the fully-local baseline, and the
bytes on the wire beside what full fine-tuning would have sent. `report` prints and plots these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedyolo.runtime.manifest import TaskSpec
from fedyolo.tasks.shares import TaskShares


@dataclass
class TaskRun:
    """One task as the run goes: the server's view, the observer's evaluations, the local baseline."""

    data: TaskShares
    status: dict[str, Any] = field(default_factory=dict)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)  # module version -> held-out metrics
    local: list[dict[str, Any]] = field(default_factory=list)
    extra_downloads: dict[int, int] = field(default_factory=dict)  # round -> module downloads not in updates
    finished_at: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the server's committed rounds
    wire_bytes: int = 0  # one module on the wire (safetensors)


def task_result(run: TaskRun, spec: TaskSpec, full_model_bytes: int) -> dict[str, Any]:
    """One task's results: a row per round (round 0 is the exported module), bytes, the local baseline.

    `full_model_bytes` is what full fine-tuning sends for the backbone alone, per transfer.
    """
    head_bytes = sum(4 * t.numel for t in spec.trainable if t.name.startswith("head."))
    full_per_transfer = full_model_bytes + head_bytes
    wire = run.wire_bytes or spec.module_bytes
    rows: list[dict[str, Any]] = [{"round": 0, **_metrics(run.evals.get(0)), "updates": 0, "examples": 0}]
    for h in run.history:
        r = int(h["round"])
        downloads = int(h["updates"]) + run.extra_downloads.get(r, 0)
        rows.append(
            {
                "round": r,
                **_metrics(run.evals.get(int(h["module_version"]))),
                "updates": int(h["updates"]),
                "examples": int(h["examples"]),
                "train_loss": h["metrics"].get("train_loss"),
                "client_accuracy_before": h["metrics"].get("accuracy"),
                "uploaded_bytes": int(h["bytes_received"]),
                "downloads": downloads,
                "downloaded_bytes": downloads * wire,
                "seconds": (h["committed_at"] or 0) - (h["opened_at"] or 0),
            }
        )
    uploads = sum(r.get("updates", 0) for r in rows)
    downloads = sum(r.get("downloads", 0) for r in rows)
    up_bytes = sum(r.get("uploaded_bytes", 0) for r in rows)
    down_bytes = sum(r.get("downloaded_bytes", 0) for r in rows)
    local = sorted(run.local, key=lambda e: e["client"])
    return {
        "labels": len(run.data.labels),
        "train_used": run.data.train_used,
        "train_available": run.data.train_available,
        "test_used": len(run.data.test),
        "test_available": run.data.test_available,
        "client_sizes": [len(s) for s in run.data.shares],
        "module_kind": spec.module_kind,
        "module_bytes_on_wire": wire,
        "rounds": rows,
        "federated_final_accuracy": rows[-1].get("accuracy") if len(rows) > 1 else None,
        "bytes": {
            "uploads": uploads,
            "downloads": downloads,
            "uploaded": up_bytes,
            "downloaded": down_bytes,
            "full_finetuning_per_transfer": full_per_transfer,
            "full_finetuning_total": (uploads + downloads) * full_per_transfer,
            "ratio": (uploads + downloads) * full_per_transfer / max(up_bytes + down_bytes, 1),
        },
        "local": [{k: e[k] for k in ("client", "examples", "epochs", "accuracy", "loss")} for e in local],
        "local_mean_accuracy": sum(e["accuracy"] for e in local) / len(local) if local else None,
    }


def _metrics(event: dict[str, Any] | None) -> dict[str, Any]:
    if event is None:
        return {"accuracy": None, "loss": None}
    return {"accuracy": event["accuracy"], "loss": event["loss"], "sha256": event["sha256"]}
