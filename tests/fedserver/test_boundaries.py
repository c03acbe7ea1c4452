"""Import boundaries: the server never loads torch, onnxruntime or executorch; the client never loads torch
or the server's web stack. Each checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHECK = """
import json, sys
import {modules}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""


def loaded_roots(*modules: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(modules=", ".join(modules))],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout))


def test_fedserver_imports_no_ml_framework() -> None:
    roots = loaded_roots(
        "fedyolo.fedserver.app",
        "fedyolo.fedserver.serve",
        "fedyolo.fedserver.__main__",
    )
    assert "fastapi" in roots and "uvicorn" in roots
    assert not roots & {"torch", "onnxruntime", "executorch", "transformers", "onnx"}


@pytest.mark.parametrize("module", ["fedyolo.runtime.client", "fedyolo.runtime.fedprox"])
def test_client_imports_neither_torch_nor_the_server_stack(module: str) -> None:
    roots = loaded_roots(module)
    assert "numpy" in roots
    assert not roots & {"torch", "fastapi", "uvicorn", "starlette", "onnxruntime", "transformers"}
