"""Says, as a skip, when the Flower tests cannot run here."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None,
    reason="Flower is the `flower` extra (pip install -e '.[flower]'): tests/flower's Flower tests were not collected",
)
def test_flower_is_installed() -> None:
    import flwr

    assert flwr.__name__ == "flwr"
