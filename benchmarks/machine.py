"""What every benchmark result records about the machine it ran on: the CPU, its cores, the load.

Figures from different machines (or one machine under different load) are not comparable; each result
carries these so that a reader can tell.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 7B13"), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(load_at_start: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    """The result's "machine" entry: CPU, cores, load average at the start (if given) and now, `extra`."""
    entry: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count()}
    if load_at_start is not None:
        entry["load_average_at_start"] = load_at_start
    entry["load_average_at_end"] = list(os.getloadavg())
    return {**entry, **extra}


CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")  # guest time is in user


def cpu_shares(before: Any, after: Any) -> dict[str, float]:
    """The whole machine's CPU time between two `psutil.cpu_times()` readings, in percent: what was idle,
    waiting for the disk, and stolen by the hypervisor for other guests (a shared VM; seen here: 0-37% of a
    run, and throughput moved with it), so that a figure can be read beside how much CPU it really had."""
    spent = {name: getattr(after, name) - getattr(before, name) for name in after._fields}
    total = sum(spent.get(name, 0.0) for name in CPU_STATES) or 1.0
    return {
        f"{name}_percent": round(100 * spent.get(name, 0.0) / total, 1)
        for name in ("idle", "iowait", "steal")
    }
