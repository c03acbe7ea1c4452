"""Where does the ExecuTorch training step go? Time per operator kind from an ETDump, and an interleaved
A/B of programs in one process (wall and process CPU per step), on the default case's shapes.

    python benchmarks/executorch_profile.py BUNDLE/backbone/backbone.ptd A.pte [B.pte ...] [--steps 12]
        [--threads N] [--etdump] [--seq 32]

`--etdump` profiles the first program (8 steps) and prints each operator's mean time per step;
otherwise the programs run in turn, step by step, so that a loaded host slows them alike. The
inputs are random word pieces (batch 8, sequence `--seq`, 32 by default; a program exported with a
dynamic length takes any up to its task's): the kernels' time does not depend on the values.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 8
SETUP = ("Method::execute", "OPERATOR_CALL", "Program::load_method", "Method::init")


def inputs(seq: int) -> list[object]:
    import torch

    ids = np.random.default_rng(0).integers(1000, 5000, (BATCH, seq)).astype(np.int64)
    return [
        torch.from_numpy(ids),
        torch.ones(BATCH, seq, dtype=torch.int64),
        torch.zeros(BATCH, dtype=torch.int64),
    ]


def per_operator(etdump: Path) -> list[tuple[str, int, float]]:
    """(operator, calls per step, mean ms per step) from an ETDump, slowest first."""
    from executorch.devtools import Inspector

    total: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for block in Inspector(etdump_path=str(etdump)).event_blocks:
        for event in block.events:
            if event.perf_data is not None and event.name not in SETUP:
                total[event.name][0] += 1
                total[event.name][1] += float(np.mean(event.perf_data.raw))
    return sorted(((k, int(c), t) for k, (c, t) in total.items()), key=lambda r: -r[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("programs", nargs="+")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="ExecuTorch threadpool size; 0: as it starts")
    parser.add_argument("--etdump", action="store_true")
    parser.add_argument("--seq", type=int, default=32, help="tokens per text")
    args = parser.parse_args()
    import torch  # noqa: F401  (loads the libtorch that the bindings link)
    from executorch.extension.pybindings._C import _load_for_executorch, _unsafe_reset_threadpool

    from fedyolo.runtime import et_kernels

    if args.threads:
        _unsafe_reset_threadpool(args.threads)
    if any(et_kernels.program_needs_kernels(Path(p)) for p in args.programs):
        et_kernels.load(args.threads)  # fedyolo's GEMM kernels, before a program that calls them loads
    feed = inputs(args.seq)
    if args.etdump:
        program = _load_for_executorch(args.programs[0], data_path=args.data, enable_etdump=True)
        for _ in range(8):
            program.run_method("forward", feed, clone_outputs=False)
        with tempfile.TemporaryDirectory() as tmp:
            program.write_etdump_result_to_file(f"{tmp}/run.etdp")
            rows = per_operator(Path(tmp) / "run.etdp")
        print(f"operator time per step: {sum(r[2] for r in rows):.1f} ms")
        for name, calls, ms in rows[:20]:
            print(f"  {name:42s} {calls:5d} calls {ms:8.1f} ms")
        return
    programs = [_load_for_executorch(p, data_path=args.data) for p in args.programs]
    wall: dict[int, list[float]] = collections.defaultdict(list)
    cpu: dict[int, list[float]] = collections.defaultdict(list)
    losses: dict[int, float] = {}
    for program in programs:
        program.run_method("forward", feed, clone_outputs=False)
    for _ in range(args.steps):
        for i, program in enumerate(programs):
            w, c = time.perf_counter(), time.process_time()
            losses[i] = float(program.run_method("forward", feed, clone_outputs=False)[0])
            wall[i].append(time.perf_counter() - w)
            cpu[i].append(time.process_time() - c)
    for i, path in enumerate(args.programs):
        w, c = np.array(wall[i]) * 1000, np.array(cpu[i]) * 1000
        print(f"{path}: wall median {np.median(w):.1f} ms (min {w.min():.1f}), CPU median {np.median(c):.1f} ms, "
              f"loss {losses[i]:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
