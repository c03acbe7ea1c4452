"""`python -m fedyolo.fedserver BUNDLE ...`: the server without the full `fedyolo` CLI."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from fedyolo.fedserver.serve import serve_command
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.plan import FederationPlan, StrategyParams


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """One option per field of the round plan (`FederationPlan`), named and typed after it: the plan is
    declared once, in the runtime."""
    for f in fields(FederationPlan):
        if f.name == "strategy_params":
            continue
        default = getattr(FederationPlan(), f.name)
        p.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)
    p.add_argument("--server-lr", type=float, default=None)
    p.add_argument("--server-momentum", type=float, default=StrategyParams().momentum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedyolo.fedserver", description=serve_command.__doc__)
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--min-clients", type=int, default=3)
    p.add_argument("--enroll-key", default=None)
    p.add_argument("--state-dir", default=None)
    p.add_argument("--deadline-s", type=float, default=600.0)
    p.add_argument("--max-update-bytes", type=int, default=0)
    p.add_argument("--max-examples", type=int, default=1_000_000)
    p.add_argument("--max-abs-weight", type=float, default=65504.0)
    p.add_argument("--max-clients", type=int, default=10_000)
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--log-level", default="info")
    p.add_argument("--workers", type=int, default=1, help="server processes (each uses a core)")
    p.add_argument("--max-header-bytes", type=int, default=32 * 1024)
    p.add_argument("--read-timeout-s", type=float, default=60.0)
    p.add_argument("--max-connections", type=int, default=1000)
    add_plan_options(p)
    args = vars(p.parse_args(argv))
    logging.basicConfig(
        level=args["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        plan = FederationPlan.from_options(args)
        plan_options = {f.name for f in fields(FederationPlan)} | {"server_lr", "server_momentum"}
        options = {k: v for k, v in args.items() if k not in plan_options and k != "bundle"}
        serve_command(args["bundle"], plan, **options)
    except FedyoloError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
