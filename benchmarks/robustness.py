"""What do the server's default bounds cost honest clients, and what do they bound against one attacker?

On the real MiniLM + LoRA, `topics`, clients sharing the train split by a Dirichlet prior (alpha 1),
FedAvg, AdamW at lr 2e-3, batch 16, 6 rounds of 1 local epoch: every round folds every client's update
through `fedserver.fold.RoundFold`, the server's own aggregation path, under three plans:

- `off`: no clipping, no example cap (what the server did before);
- `defaults`: adaptive clipping at 3x the recent median change and the example cap at 4x the recent
  median claim (`FederationPlan()`'s defaults, what `fedyolo serve` runs);
- `median`: the defaults plus the coordinate-wise median instead of the weighted mean.

1. Honest clients only (several seeds): held-out accuracy, and how many updates the bounds touched.
2. One attacker among N clients (N = 4 and 16): it trains honestly, then sends its change reversed and
   boosted 10x (`global - 10 * (trained - global)`) and claims 100x its examples. Reported: held-out
   accuracy, and how far each round moved the module towards the attacker's update
   (|new - global| / |attack - global|, the median over rounds).

    python benchmarks/robustness.py [--seeds 3] [--attack-clients 4,16] [--rounds 6] [--attack-rounds 6]

The JSON is rewritten after every run, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedyolo.fedserver.fold import RoundFold
from fedyolo.fedserver.strategies import StrategyState, delta_norm, module_delta
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.local import encode_examples, evaluate_arrays, train_round
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.runtime.wire import ModuleWeights
from fedyolo.tasks import dirichlet_partition, load_task

BOOST = 10.0  # the attacker's change, reversed and scaled
CLAIM = 100  # the attacker claims this many times its examples

PLANS = {
    "off": {"adaptive_clip": 0.0, "example_cap": 0.0},
    "defaults": {},
    "median": {"aggregate": "median"},
}


def federate(
    trainer: OrtTrainer,
    initial: ModuleWeights,
    clients: list[ExampleArrays],
    test: ExampleArrays,
    plan: FederationPlan,
    seed: int,
    attacker: int | None,
) -> dict[str, Any]:
    """`plan.rounds` rounds of every client; the attacker (if any) poisons its update."""
    global_weights, state = initial, StrategyState()
    pulls, clipped, capped = [], 0, 0
    for r in range(1, plan.rounds + 1):
        fold = RoundFold(global_weights, plan, state)
        attack = None
        for c, data in enumerate(clients):
            rng = np.random.default_rng([seed, r, c])
            examples, _ = train_round(trainer, global_weights, data, plan.for_round(r), rng)
            update = trainer.get_module()
            if c == attacker:
                attack = {k: global_weights[k] - BOOST * (update[k] - global_weights[k]) for k in update}
                update, examples = attack, CLAIM * examples
            fold.add(update, examples)
        new, state = fold.result()
        clipped += sum(f.clipped_to > 0 for f in fold.folded)
        capped += sum(f.weight < f.claimed for f in fold.folded)
        if attack is not None:
            pulls.append(
                delta_norm(module_delta(new, global_weights))
                / delta_norm(module_delta(attack, global_weights))
            )
        global_weights = new
    trainer.set_module(global_weights)
    return {
        "accuracy": evaluate_arrays(trainer, test).accuracy,
        "updates": plan.rounds * len(clients),
        "clipped": clipped,
        "capped": capped,
        "pull_median": float(np.median(pulls)) if pulls else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="honest runs: seeds 0..seeds-1")
    p.add_argument("--clients", type=int, default=4, help="clients of the honest runs")
    p.add_argument("--attack-clients", default="4,16", help="clients of the runs with one attacker")
    p.add_argument("--rounds", type=int, default=6, help="rounds of the honest runs")
    p.add_argument("--attack-rounds", type=int, default=6, help="rounds of the runs with an attacker")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--backbone", default="minilm", help="minilm; tiny-bert only to check the script runs")
    p.add_argument("--work", type=Path, default=Path("/tmp/fedyolo-accuracy"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "robustness.json")
    args = p.parse_args()
    start = time.perf_counter()
    bundle_dir = args.work / f"bundle-{args.backbone}"
    if not (bundle_dir / "manifest.json").is_file():
        from fedyolo.export.pipeline import export_onnx

        topics_labels = load_task("topics").labels
        export_onnx(bundle_dir, "topics", topics_labels, args.backbone, max_length=24, show_progress=False)
    bundle = open_bundle(bundle_dir)
    trainer = OrtTrainer(bundle, "topics", lr=2e-3)
    spec, topics = bundle.task("topics"), load_task("topics")
    initial = initial_module(bundle, "topics")
    test = encode_examples(bundle, spec, topics.test)

    def plan(name: str, rounds: int) -> FederationPlan:
        return FederationPlan(rounds=rounds, local_epochs=1, lr=2e-3, batch_size=16, **PLANS[name])

    def shares(n: int, seed: int) -> list[ExampleArrays]:
        parts = dirichlet_partition(topics.train, topics.labels, n, args.alpha, seed)
        return [encode_examples(bundle, spec, share) for share in parts if share]

    honest: dict[str, list[dict[str, Any]]] = {"off": [], "defaults": []}
    attacked: dict[str, dict[str, Any]] = {}

    def save() -> dict[str, Any]:
        pairs = zip(honest["defaults"], honest["off"], strict=False)
        cost = [100 * (d["accuracy"] - o["accuracy"]) for d, o in pairs]
        out = {
            "question": "accuracy cost of the default bounds with honest clients; what they bound with one attacker",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_at_save": os.getloadavg(),
            },
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            | {"attack": f"global - {BOOST:g} x its change, claiming {CLAIM}x its examples"},
            "honest": honest,
            "honest_cost_points": {"per_seed": cost, "median": float(np.median(cost)) if cost else None},
            "target": "defaults cost under 0.5 points with honest clients",
            "attacked": attacked,
            "seconds": time.perf_counter() - start,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
        return out

    for seed in range(args.seeds):
        clients = shares(args.clients, seed)
        for name in honest:
            t = time.perf_counter()
            run = federate(trainer, initial, clients, test, plan(name, args.rounds), seed, None)
            honest[name].append(run | {"seed": seed})
            print(f"honest seed {seed} {name}: {run} ({time.perf_counter() - t:.0f} s)", flush=True)
            save()
    for n in (int(x) for x in args.attack_clients.split(",")):
        clients = shares(n, 0)
        for name in PLANS:
            t = time.perf_counter()
            run = federate(trainer, initial, clients, test, plan(name, args.attack_rounds), 0, 0)
            attacked[f"{n} clients, {name}"] = run
            print(f"attacked {n} {name}: {run} ({time.perf_counter() - t:.0f} s)", flush=True)
            save()
    out = save()
    cost = out["honest_cost_points"]["per_seed"]
    print(
        f"\nhonest, {args.clients} clients: defaults - off = {out['honest_cost_points']['median']} points "
        f"(per seed {cost})"
    )
    for name, r in attacked.items():
        print(f"one attacker among {name}: accuracy {r['accuracy']:.1%}, pull {r['pull_median']:.3f}")
    print(f"wrote {args.out} in {out['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
