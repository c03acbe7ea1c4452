"""Import boundaries are the architecture (DESIGN.md): a phone runs `runtime` alone, a server box runs
`fedserver` alone. Every module of each part is imported in a fresh interpreter, and `sys.modules` is
checked; and a real bundle trains in a fresh interpreter with torch installed but never loaded."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# part -> top-level names that must never appear in sys.modules once the part is imported. The same
# rules, checked statically on every import statement, are import-linter's contracts in pyproject.toml.
FORBIDDEN = {
    "runtime": (
        "torch",
        "transformers",
        "peft",
        "fastapi",
        "uvicorn",
        "fedyolo.fedserver",
        "fedyolo.export",
        "fedyolo.cli",
        "fedyolo.demo",
        "fedyolo.tasks",
        "fedyolo.simulate",
    ),
    "fedserver": ("torch", "onnxruntime", "executorch", "fedyolo.export", "fedyolo.cli", "fedyolo.demo"),
    "export": ("fastapi", "uvicorn", "fedyolo.fedserver"),
    # `fedyolo --help` and the device's commands (train, client, status) in the base install
    "cli": ("torch", "transformers", "peft", "fastapi", "uvicorn", "fedyolo.export", "fedyolo.fedserver"),
}

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import fedyolo.{part} as part
names = [part.__name__] + sorted(m.name for m in pkgutil.walk_packages(part.__path__, part.__name__ + "."))
for name in names:
    importlib.import_module(name)
print(json.dumps({{"imported": names, "loaded": sorted(sys.modules)}}))
"""


def fresh_python(code: str) -> dict[str, Any]:
    """Run `code` in a new interpreter and parse the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def offenders(loaded: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))


def module_files(part: str) -> set[str]:
    """Every module of the part's folder, as a dotted name: what the walk must have imported."""
    root = REPO / "fedyolo" / part
    return {
        "fedyolo." + ".".join((part, *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
    }


@pytest.mark.parametrize("part", list(FORBIDDEN))
def test_every_module_of_a_part_imports_without_the_forbidden_ones(part: str) -> None:
    # Execute
    seen = fresh_python(IMPORT_ALL.format(part=part))

    # Assert: no module skipped, none of the forbidden ones loaded
    assert module_files(part) <= set(seen["imported"])
    assert offenders(seen["loaded"], FORBIDDEN[part]) == []


def test_training_a_real_bundle_leaves_torch_unloaded(tiny_bert_bundle: Path) -> None:
    # Prepare: torch is installed here (the bundle was exported with it in this very process)
    assert importlib.util.find_spec("torch") is not None
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        from fedyolo.runtime.bundle import open_bundle
        from fedyolo.runtime.data import Example
        from fedyolo.runtime.local import encode_examples, evaluate_arrays
        from fedyolo.runtime.ort_trainer import OrtTrainer

        bundle = open_bundle({str(tiny_bert_bundle)!r}, tasks=["topics"])
        trainer = OrtTrainer(bundle, "topics", lr=1e-2)
        examples = [Example("hello there, how are you", "greetings"), Example("what is a computer", "computers"),
                    Example("tell me a joke", "humor"), Example("who won the game", "sports")]
        arrays = encode_examples(bundle, trainer.task, examples)
        losses = [trainer.step(arrays) for _ in range(8)]
        accuracy = evaluate_arrays(trainer, arrays).accuracy
        print(json.dumps({{"losses": losses, "accuracy": accuracy, "loaded": sorted(sys.modules),
                           "torch_installed": importlib.util.find_spec("torch") is not None}}))
        """
    )

    # Execute
    seen = fresh_python(code)

    # Assert: it trained, with ONNX Runtime's training core, and torch stayed out
    assert seen["torch_installed"]
    assert seen["losses"][-1] < seen["losses"][0]
    assert "onnxruntime.capi._pybind_state" in seen["loaded"]
    assert offenders(seen["loaded"], FORBIDDEN["runtime"]) == []
