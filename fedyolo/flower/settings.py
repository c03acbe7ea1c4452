"""A Flower run's settings: the project's `FederationPlan` and cohort, read from Flower's run config.

`[tool.flwr.app.config]` in a Flower app's pyproject.toml (written by `fedyolo flower new`) is flat TOML,
and `flwr run --run-config 'rounds=5 lr=0.004'` overrides single keys, so every plan field is one key
spelled with dashes (`local-epochs`, `clip-norm`, `server-momentum`). Values a run config does not give
keep the plan's defaults, so the ServerApp, the ClientApp and `fedyolo simulate` read the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.plan import FederationPlan, StrategyParams

PRIVACY = ("none", "server", "client", "secagg")


@dataclass(frozen=True)
class FlowerRun:
    """Everything a fedyolo Flower run is configured by, besides the nodes themselves.

    Attributes
    ----------
    bundle, task
        The bundle every node holds (a node may give its own path as node config `bundle`) and the task.
    plan
        The federation's plan: rounds, local training, bounds, the fold's strategy.
    fraction, seed
        Each round trains `max(1, round(fraction * partitions))` clients drawn by `sample_clients`
        with this seed (the same draw as `fedyolo simulate`); clients' shuffles are seeded by it too.
    alpha, train_per_task, test_per_task
        For nodes given a `partition-id` (simulation, tests): the built-in task's Dirichlet split among
        `num-partitions` clients and its budget cuts, as `fedyolo simulate` makes them.
    eval_every
        Held-out evaluation of the committed module every this many rounds (and after the last).
    out
        Where the ServerApp writes each round's module (safetensors), the strategy state and history.json.
    privacy, noise_multiplier, dp_clip
        Flower's differential-privacy wrapper with fixed clipping: "server" or "client" side; "secagg":
        Flower's secure aggregation (SecAgg+, secagg.py), where the server sees only the round's mean
        change; or "none".
    secagg_shares, secagg_threshold, secagg_range
        SecAgg+'s secret shares per client and shares needed to unmask (fractions: of the cohort, of the
        shares), and the range [-r, r] a weighted change is quantised in (2**22 steps).
    threads
        ONNX Runtime threads per client process; 0 takes every core.
    min_nodes, timeout_s
        The ServerApp waits (at most `timeout_s`) for this many nodes before round 1; a round waits at
        most `timeout_s` for its replies.
    """

    bundle: Path = Path("bundle")
    task: str = "topics"
    plan: FederationPlan = field(default_factory=FederationPlan)
    fraction: float = 1.0
    seed: int = 0
    alpha: float = 1.0
    train_per_task: int = 0
    test_per_task: int = 0
    eval_every: int = 1
    out: Path = Path("flower_out")
    privacy: str = "none"
    noise_multiplier: float = 0.0
    dp_clip: float = 1.0
    secagg_shares: float = 0.5
    secagg_threshold: float = 0.6
    secagg_range: float = 1.0
    threads: int = 0
    min_nodes: int = 1
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise FedyoloError(f"fraction {self.fraction} is not in (0, 1]; e.g. 0.1 trains 10% a round")
        if self.privacy not in PRIVACY:
            raise FedyoloError(f"privacy {self.privacy!r}: choose one of {', '.join(PRIVACY)}")
        if self.privacy == "secagg" and self.plan.aggregate != "mean":
            raise FedyoloError(
                f"aggregate={self.plan.aggregate} needs every update, which secure aggregation hides: "
                "use aggregate=mean with privacy=secagg"
            )
        if self.eval_every < 1:
            raise FedyoloError("eval-every must be at least 1")

    def to_run_config(self) -> dict[str, Any]:
        """Flat, dash-separated TOML values: what `[tool.flwr.app.config]` holds."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "plan":
                for k, v in asdict(value).items():
                    if k == "strategy_params":
                        # TOML has no None: a strategy's default server lr is written as 0
                        out |= {
                            _param_key(p).replace("_", "-"): 0.0 if x is None else x for p, x in v.items()
                        }
                    else:
                        out[k.replace("_", "-")] = v
            else:
                out[f.name.replace("_", "-")] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any], base: FlowerRun | None = None) -> FlowerRun:
        """`base` (defaults when None) with every key `config` gives; an unknown key is an error."""
        base = base if base is not None else cls()
        values = {k.replace("-", "_"): v for k, v in config.items()}
        plan_names = {f.name for f in fields(FederationPlan)} - {"strategy_params"}
        param_names = {_param_key(f.name): f.name for f in fields(StrategyParams)}
        own = {f.name for f in fields(cls)} - {"plan"}
        unknown = sorted(set(values) - plan_names - set(param_names) - own)
        if unknown:
            raise FedyoloError(f"unknown run config keys {unknown}; see fedyolo.flower.settings.FlowerRun")
        plan_values = {k: _like(getattr(base.plan, k), v) for k, v in values.items() if k in plan_names}
        params = {
            param_names[k]: _like(getattr(base.plan.strategy_params, param_names[k]), v)
            for k, v in values.items()
            if k in param_names
        }
        if params.get("server_lr") == 0:  # TOML has no None: 0 takes the strategy's default
            params["server_lr"] = None
        plan = replace(base.plan, **plan_values, strategy_params=replace(base.plan.strategy_params, **params))
        mine = {k: _like(getattr(base, k), v) for k, v in values.items() if k in own}
        return replace(base, plan=plan, **mine)


def _param_key(name: str) -> str:
    """A StrategyParams field's run config key: `server_lr`, `server_momentum`, `server_beta1`."""
    return name if name.startswith("server_") else f"server_{name}"


def _like(current: Any, value: Any) -> Any:
    """`value` as the type of the field it sets (TOML gives 1 for 1.0; a path is a string)."""
    if isinstance(current, Path):
        return Path(str(value))
    if current is None:
        return float(value)
    if isinstance(current, bool):
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    return value
