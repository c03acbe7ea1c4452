"""`--backend` as a user meets it: a bundle without ExecuTorch programs, ExecuTorch not installed, a
backend that does not exist: one line each, naming the fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.test_cli_federation import fedyolo


def test_executorch_on_an_onnx_only_bundle_names_the_export_or_the_extra(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    done = fedyolo("train", tiny_bert_bundle, "--task", "topics", "--backend", "executorch", home=tmp_path)

    assert done.returncode != 0
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    if importlib.util.find_spec("executorch") is None:
        assert "pip install 'fedyolo[executorch]'" in line
    else:
        assert (
            f"add one with `fedyolo export executorch --task topics --module lora --out {tiny_bert_bundle}`"
            in line
        )


def test_an_unknown_backend_is_one_line(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    done = fedyolo("train", tiny_bert_bundle, "--task", "topics", "--backend", "tflite", home=tmp_path)

    assert done.returncode != 0
    assert done.stderr.strip() == "error: unknown backend 'tflite'; choose one of: ort, executorch"
