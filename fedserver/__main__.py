"""`python -m fedyolo.fedserver BUNDLE ...`: the server without the full `fedyolo` CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from fedyolo.fedserver.serve import serve_command
from fedyolo.runtime.errors import FedyoloError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedyolo.fedserver", description=serve_command.__doc__)
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--min-clients", type=int, default=3)
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedavgm", "fedadam"])
    p.add_argument("--server-lr", type=float, default=None)
    p.add_argument("--enroll-key", default=None)
    p.add_argument("--state-dir", default=None)
    p.add_argument("--deadline-s", type=float, default=600.0)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--proximal-mu", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=0.0)
    p.add_argument("--max-update-bytes", type=int, default=0)
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--log-level", default="info")
    p.add_argument("--workers", type=int, default=1, help="server processes (each uses a core)")
    p.add_argument("--max-header-bytes", type=int, default=32 * 1024)
    p.add_argument("--read-timeout-s", type=float, default=60.0)
    p.add_argument("--max-connections", type=int, default=1000)
    args = vars(p.parse_args(argv))
    logging.basicConfig(
        level=args["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve_command(**args)
    except FedyoloError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
