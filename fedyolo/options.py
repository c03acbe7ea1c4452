"""`key=value` pairs from a command line (`--option r=16`, `--set strategy=fedavgm`), shared by every command
that takes them; values are JSON where they parse as JSON (8, 0.1, true, ["q","v"]), else strings."""

from __future__ import annotations

import json
from typing import Any

from fedyolo.runtime.errors import FedyoloError


def parse_pairs(pairs: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """`pairs` as a dict; a pair without `=` is a FedyoloError naming `flag` and an `example` pair."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise FedyoloError(f"{flag} {pair!r} is not key=value; e.g. {flag} {example}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
