"""Flower tests need the `flower` extra; without it they are skipped, saying so."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="Flower is the `flower` extra: pip install -e '.[flower]'")
