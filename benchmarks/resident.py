"""How much memory does a second resident task cost? Peak RSS of one task and of two tasks trained
alternately in one process over one shared backbone, with ONNX Runtime's CPU arena per session (as
before) and with the one shared arena the runtime now registers (runtime/ort_arena.py), arms interleaved.

    python benchmarks/resident.py [--bundle B] [--rounds 3] [--steps 10] [--out benchmarks/results/resident.json]

Default case: MiniLM-L6; `topics` with LoRA r=8 and `language` with an adapter (exported first when no
--bundle is given), batch 8, sequence 32, real sentences of each task. Each arm runs in a fresh
interpreter: its peak RSS (VmHWM) is its own. Memory figures are machine-independent to a few MB; the
step times are printed but, on a shared host, only the memory is worth comparing across arms.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH, SEQ = 8, 32
TASKS = ("topics", "language")
ARMS = {
    "one task, arena per session": (TASKS[:1], False),
    "one task, shared arena": (TASKS[:1], True),
    "two tasks, arena per session": (TASKS, False),
    "two tasks, shared arena": (TASKS, True),
}
MB = 2**20


def memory_now() -> dict[str, float]:
    """Peak and current RSS, and the current anonymous / file-backed split, in MiB (/proc/self/status)."""
    from fedyolo.runtime.profiler import status_kb

    fields = {"VmHWM": "peak", "VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    now = status_kb()
    return {name: now.get(field, 0) / 1024 for field, name in fields.items()}


def worker(bundle_dir: str, tasks: list[str], shared_arena: bool, steps: int) -> dict[str, Any]:
    """Open `tasks` over one backbone, train them alternately for `steps` rounds, predict once each."""
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.local import encode_examples
    from fedyolo.runtime.ort_import import load_ort
    from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
    from fedyolo.runtime.profiler import mapped_rss_bytes
    from fedyolo.tasks import load_task

    bundle = open_bundle(bundle_dir, tasks=tasks, verify=False)
    batches = {}
    for t in tasks:  # real sentences, encoded before the runtime's memory is counted
        arrays = encode_examples(bundle, bundle.task(t), load_task(t).train[: BATCH * steps])
        arrays = {k: v[:, :SEQ] if v.ndim == 2 else v for k, v in arrays.items()}
        batches[t] = [{k: v[i * BATCH : (i + 1) * BATCH] for k, v in arrays.items()} for i in range(steps)]
    load_ort()
    runtime = memory_now()
    shared = SharedBackbone(bundle, shared_arena=shared_arena)
    trainers = [OrtTrainer(bundle, t, backbone=shared) for t in tasks]
    loaded = memory_now()
    losses: dict[str, list[float]] = {t: [] for t in tasks}
    times = []
    for i in range(steps):
        for tr in trainers:
            start = time.perf_counter()
            losses[tr.task.task_id].append(tr.step(batches[tr.task.task_id][i]))
            times.append(time.perf_counter() - start)
    for tr in trainers:
        tr.predict({k: v for k, v in batches[tr.task.task_id][0].items() if k != "labels"})
    return {
        "runtime_mb": runtime,
        "loaded_mb": loaded,
        "end_mb": memory_now(),
        "backbone_resident_mb": mapped_rss_bytes(bundle.backbone_path) / MB,
        "losses": losses,
        "step_ms_median": 1e3 * float(np.median(times[len(tasks) :])),
    }


def run_arm(bundle: str, tasks: tuple[str, ...], shared_arena: bool, steps: int) -> dict[str, Any]:
    request = json.dumps(
        {"bundle": bundle, "tasks": list(tasks), "shared_arena": shared_arena, "steps": steps}
    )
    done = subprocess.run([sys.executable, __file__, "--worker", request], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {tasks} shared_arena={shared_arena} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    peaks = [r["end_mb"]["peak"] for r in runs]
    return {
        "peak_mb_median": float(np.median(peaks)),
        "peak_mb_p95": float(np.percentile(peaks, 95)),
        "anon_mb_median": float(np.median([r["end_mb"]["anon"] for r in runs])),
        "file_mb_median": float(np.median([r["end_mb"]["file"] for r in runs])),
        "loaded_mb_median": float(np.median([r["loaded_mb"]["rss"] for r in runs])),
        "runtime_mb_median": float(np.median([r["runtime_mb"]["rss"] for r in runs])),
        "backbone_resident_mb_median": float(np.median([r["backbone_resident_mb"] for r in runs])),
        "step_ms_median": float(np.median([r["step_ms_median"] for r in runs])),
    }


def export_default(root: Path) -> str:
    from fedyolo.export.pipeline import export_onnx
    from fedyolo.tasks import load_task

    bundle = root / "bundle"
    export_onnx(bundle, "topics", load_task("topics").labels, module="lora", show_progress=False)
    export_onnx(bundle, "language", load_task("language").labels, module="adapter", show_progress=False)
    return str(bundle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", help="a MiniLM bundle with tasks topics and language; default: export one"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/resident.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        r = json.loads(args.worker)
        print(json.dumps(worker(r["bundle"], r["tasks"], r["shared_arena"], r["steps"])))
        return

    from fedyolo.cli.profile import machine

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or export_default(Path(tmp))
        before = machine()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ARMS}
        for _ in range(args.rounds):  # interleaved: each round runs every arm once
            for name, (tasks, shared_arena) in ARMS.items():
                runs[name].append(run_arm(bundle, tasks, shared_arena, args.steps))
                print(f"{name:30s} peak {runs[name][-1]['end_mb']['peak']:.0f} MiB", flush=True)
    arms = {name: summary(r) for name, r in runs.items()}
    peak = {name: a["peak_mb_median"] for name, a in arms.items()}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine_at_start": before,
        "machine_at_end": machine(),
        "case": {
            "tasks": list(TASKS),
            "batch": BATCH,
            "seq": SEQ,
            "steps": args.steps,
            "rounds": args.rounds,
        },
        "arms": arms,
        "ratios": {
            "two_over_one_arena_per_session": peak["two tasks, arena per session"]
            / peak["one task, arena per session"],
            "two_over_one_shared_arena": peak["two tasks, shared arena"] / peak["one task, shared arena"],
            "one_task_shared_over_per_session": peak["one task, shared arena"]
            / peak["one task, arena per session"],
        },
        # the arena decides where tensors live, not what is computed: every loss must be identical
        "losses_identical_across_arenas": all(
            runs[f"{n}, shared arena"][i]["losses"] == runs[f"{n}, arena per session"][i]["losses"]
            for n in ("one task", "two tasks")
            for i in range(args.rounds)
        ),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name, a in arms.items():
        print(
            f"{name:30s} peak median {a['peak_mb_median']:.0f} MiB (p95 {a['peak_mb_p95']:.0f}; anon {a['anon_mb_median']:.0f}, "
            f"file {a['file_mb_median']:.0f}), step {a['step_ms_median']:.0f} ms"
        )
    r = result["ratios"]
    print(
        f"two tasks / one task: {r['two_over_one_arena_per_session']:.2f}x with an arena per session, "
        f"{r['two_over_one_shared_arena']:.2f}x with the shared arena (target <= 1.2); losses identical: "
        f"{result['losses_identical_across_arenas']}; results in {args.out}"
    )


if __name__ == "__main__":
    main()
