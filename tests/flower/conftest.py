"""Flower tests need the `flower` extra. Without it the modules that import Flower are not collected, and
`test_extra.py` reports one skip saying so; the import-boundary tests run either way."""

from __future__ import annotations

import importlib.util

NEEDS_FLOWER = [
    "test_records.py",
    "test_simulation.py",
    "test_privacy.py",
    "test_client_mods.py",
    "test_deployment.py",
    "test_project.py",
    "test_secagg.py",
]

if importlib.util.find_spec("flwr") is None:
    collect_ignore = NEEDS_FLOWER
