"""Fixtures shared across parts. Keep this file small and generic; part-specific fixtures live beside
their tests (e.g. tests/fedserver/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bert_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-BERT bundle with one task, `topics` (LoRA, the built-in labels), exported once per session.

    Shared by every test that asks for it: read it, never write into it (use `bundle_copy` for that).
    """
    from fedyolo.export.pipeline import export_onnx  # torch: imported only by tests that need a bundle
    from fedyolo.tasks import load_task

    out = tmp_path_factory.mktemp("session") / "bundle"
    export_onnx(
        out, "topics", load_task("topics").labels, backbone="tiny-bert", module="lora", show_progress=False
    )
    return out


@pytest.fixture
def bundle_copy(tiny_bert_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_bert_bundle` under this test's tmp_path, free to modify."""
    return Path(shutil.copytree(tiny_bert_bundle, tmp_path / "bundle"))
