"""A broken bundle or a bad module update is a clear error that names the problem and the fix, before
anything is loaded: never a crash later, never a half-applied update."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import BundleError, ModuleWeightsError
from fedyolo.runtime.manifest import BACKBONE_FILE, MANIFEST_NAME, TRAINING_MODEL, read_manifest
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module


def remove_manifest(root: Path) -> None:
    (root / MANIFEST_NAME).unlink()


def malformed_json(root: Path) -> None:
    text = (root / MANIFEST_NAME).read_text()
    (root / MANIFEST_NAME).write_text(text[: len(text) // 2])


def json_array(root: Path) -> None:
    (root / MANIFEST_NAME).write_text("[1, 2, 3]")


def missing_field(root: Path) -> None:
    raw = json.loads((root / MANIFEST_NAME).read_text())
    del raw["backbone"]["file"]
    (root / MANIFEST_NAME).write_text(json.dumps(raw))


def future_schema(root: Path) -> None:
    raw = json.loads((root / MANIFEST_NAME).read_text())
    raw["schema_version"] = 2
    (root / MANIFEST_NAME).write_text(json.dumps(raw))


def truncated_backbone(root: Path) -> None:
    path = root / BACKBONE_FILE
    path.write_bytes(path.read_bytes()[:1000])


def flipped_byte_in_graph(root: Path) -> None:
    path = root / "tasks" / "topics" / TRAINING_MODEL
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def deleted_graph(root: Path) -> None:
    (root / "tasks" / "topics" / TRAINING_MODEL).unlink()


def task_id_outside(root: Path) -> None:
    raw = json.loads((root / MANIFEST_NAME).read_text())
    raw["tasks"]["../../outside"] = raw["tasks"].pop("topics")
    (root / MANIFEST_NAME).write_text(json.dumps(raw))


def file_outside(root: Path) -> None:
    raw = json.loads((root / MANIFEST_NAME).read_text())
    files = raw["tasks"]["topics"]["files"]
    files["../../manifest.json"] = files.pop(TRAINING_MODEL)
    (root / MANIFEST_NAME).write_text(json.dumps(raw))


# (how the bundle is broken, what the message must say: the problem, then the fix)
BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "missing manifest": (remove_manifest, ("not a fedyolo bundle", MANIFEST_NAME, "fedyolo export onnx")),
    "malformed json": (malformed_json, ("not valid JSON", "re-export")),
    "json array": (json_array, ("not a JSON object", "re-export")),
    "missing field": (missing_field, ("malformed", "file", "re-export")),
    "wrong schema_version": (future_schema, ("schema_version is 2", "reads 1", "re-export", "install")),
    "truncated backbone": (truncated_backbone, ("backbone", "1000 bytes", "truncated", "re-download")),
    "flipped byte in a graph": (flipped_byte_in_graph, (TRAINING_MODEL, "'topics'", "sha256", "re-export")),
    "deleted graph": (deleted_graph, (TRAINING_MODEL, "missing", "re-export")),
    "task id outside the bundle": (task_id_outside, ("'../../outside'", "not allowed", "re-export")),
    "file outside its task folder": (file_outside, ("'../../manifest.json'", "outside", "re-export")),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_open_bundle_names_the_problem_and_the_fix(bundle_copy: Path, case: str) -> None:
    # Prepare
    breaker, words = BROKEN[case]
    breaker(bundle_copy)

    # Execute
    with pytest.raises(BundleError) as raised:
        open_bundle(bundle_copy)

    # Assert
    message = str(raised.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_unknown_task_lists_the_tasks_there_are(tiny_bert_bundle: Path) -> None:
    # Execute
    with pytest.raises(BundleError) as raised:
        open_bundle(tiny_bert_bundle, tasks=["sentiment"])

    # Assert
    message = str(raised.value)
    assert "'sentiment' is not in this bundle" in message
    assert "tasks: topics" in message
    assert "fedyolo export onnx --task sentiment" in message


def test_a_flipped_byte_fails_before_onnx_runtime_sees_the_file(bundle_copy: Path) -> None:
    # Prepare: a task that is fine, and one that is corrupt; asking for the fine one only still works
    flipped_byte_in_graph(bundle_copy)

    # Execute / Assert
    assert open_bundle(bundle_copy, tasks=[]).manifest.tasks.keys() == {"topics"}
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(bundle_copy, tasks=["topics"])


def module_of(bundle: Path) -> tuple[ModuleWeights, str]:
    """The task's initial module weights and the name of its first (2-D) tensor."""
    from safetensors.numpy import load_file

    weights = load_file(str(bundle / "tasks" / "topics" / "module.safetensors"))
    name = next(n for n, w in weights.items() if w.ndim == 2)
    return weights, name


def without(weights: ModuleWeights, name: str) -> ModuleWeights:
    return {k: v for k, v in weights.items() if k != name}


def reshaped(weights: ModuleWeights, name: str) -> ModuleWeights:
    return {**weights, name: weights[name][:, :-1].copy()}


def with_nan(weights: ModuleWeights, name: str) -> ModuleWeights:
    bad = weights[name].copy()
    bad.flat[3] = np.nan
    return {**weights, name: bad}


def with_inf(weights: ModuleWeights, name: str) -> ModuleWeights:
    bad = weights[name].copy()
    bad.flat[0] = -np.inf
    return {**weights, name: bad}


def as_float64(weights: ModuleWeights, name: str) -> ModuleWeights:
    return {**weights, name: weights[name].astype(np.float64)}


def with_extra(weights: ModuleWeights, name: str) -> ModuleWeights:
    return {**weights, "backbone.embeddings.word_embeddings.weight": np.zeros((4, 4), np.float32)}


# (how the update is wrong, what the message must say)
BAD_UPDATES: dict[str, tuple[Callable[[ModuleWeights, str], ModuleWeights], tuple[str, ...]]] = {
    "missing name": (without, ("missing", "manifest")),
    "unexpected name": (with_extra, ("unexpected", "word_embeddings", "manifest")),
    "wrong shape": (reshaped, ("shape", "manifest says")),
    "nan": (with_nan, ("NaN or Inf",)),
    "inf": (with_inf, ("NaN or Inf",)),
    "float64": (as_float64, ("float64", "float32")),
}


@pytest.mark.parametrize("case", list(BAD_UPDATES))
def test_decode_module_refuses_a_bad_update(tiny_bert_bundle: Path, case: str) -> None:
    # Prepare: a safetensors body as a client or a hostile peer could send it
    spoil, words = BAD_UPDATES[case]
    weights, name = module_of(tiny_bert_bundle)
    task = read_manifest(tiny_bert_bundle).task("topics")
    body = save(spoil(weights, name))

    # Execute
    with pytest.raises(ModuleWeightsError) as raised:
        decode_module(body, task)

    # Assert
    for word in words:
        assert word in str(raised.value), f"{word!r} not in: {raised.value}"


def test_decode_module_refuses_garbage_and_accepts_its_own_encoding(tiny_bert_bundle: Path) -> None:
    # Prepare
    weights, _ = module_of(tiny_bert_bundle)
    task = read_manifest(tiny_bert_bundle).task("topics")

    # Execute / Assert
    with pytest.raises(ModuleWeightsError, match="not a valid safetensors"):
        decode_module(b"\x80\x04 pickled? no", task)
    decoded = decode_module(encode_module(weights, task), task)
    assert decoded.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(decoded[name], value)


@pytest.mark.parametrize("case", list(BAD_UPDATES))
def test_set_module_refuses_a_bad_update_and_keeps_the_module(tiny_bert_bundle: Path, case: str) -> None:
    # Prepare
    spoil, words = BAD_UPDATES[case]
    trainer = OrtTrainer(open_bundle(tiny_bert_bundle, tasks=["topics"]), "topics")
    before = trainer.get_module()
    name = next(n for n, w in before.items() if w.ndim == 2)

    # Execute
    with pytest.raises(ModuleWeightsError) as raised:
        trainer.set_module(spoil({k: v + 1.0 for k, v in before.items()}, name))

    # Assert: the error names it, and no tensor of the bad update was applied
    for word in words:
        assert word in str(raised.value), f"{word!r} not in: {raised.value}"
    after = trainer.get_module()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)
