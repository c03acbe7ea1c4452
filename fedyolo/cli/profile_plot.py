"""The PNG of `fedyolo profile --plot`: how a step's cost grows, where its memory goes, and drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MB = 2**20


def plot_report(report: dict[str, Any], out: Path) -> None:
    """Step time against tokens per batch (one line per backend and thread count), memory per case,
    and step time over the run (the sustained mode's drift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, (cost, memory, over_time) = plt.subplots(1, 3, figsize=(16, 5))
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        c = r["case"]
        key = f"{c['backend']}, {c['threads'] or 'all'} threads"
        lines.setdefault(key, []).append((c["batch"] * c["seq"], r["step_ms_median"], r.get("floor_ms", 0.0)))
    for key, points in lines.items():
        points.sort()
        tokens = [p[0] for p in points]
        cost.plot(tokens, [p[1] for p in points], marker="o", label=f"{key}: step median")
        if any(p[2] for p in points):
            cost.plot(tokens, [p[2] for p in points], linestyle=":", label=f"{key}: compute floor")
    cost.set(xscale="log", yscale="log", xlabel="tokens per batch (batch × seq)", ylabel="ms per step")
    ticks = sorted({p[0] for points in lines.values() for p in points})
    cost.set_xticks(ticks, [str(t) for t in ticks], minor=False)
    cost.set_xticks([], minor=True)
    cost.set_title("step time and its compute floor")
    cost.legend(fontsize=7)

    labels = [
        f"{r['case']['backend']} {r['case']['batch']}×{r['case']['seq']} t{r['case']['threads'] or 'all'}"
        for r in rows
    ]
    bottom = [0.0] * len(rows)
    for part in ("runtime", "backbone", "module_optimizer", "activations"):
        heights = [r["rss"][part] / MB for r in rows]
        memory.bar(labels, heights, bottom=bottom, label=part.replace("_", " + "))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    memory.set(ylabel="MiB at peak (resident)", title="peak RSS, split")
    memory.tick_params(axis="x", rotation=60, labelsize=7)
    memory.legend(fontsize=7)

    for r, label in zip(rows, labels, strict=True):
        elapsed, t = [], 0.0
        for ms in r["step_ms"]:
            t += ms / 1e3
            elapsed.append(t)
        over_time.plot(elapsed, r["step_ms"], linewidth=0.8, label=label)
    over_time.set(xlabel="seconds into the run", ylabel="ms per step", title="step time over the run (drift)")
    over_time.legend(fontsize=7)

    m = report["machine"]
    fig.suptitle(
        f"fedyolo profile: task {report['task']} on {m['cpu']}, {m['nproc']} cores, load {m['load_avg'][0]}"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
