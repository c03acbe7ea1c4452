"""The `fedyolo` command as a user runs it, in a subprocess: a mistake is one line on stderr that names the
problem and the fix, a non-zero exit, no traceback, and no partial bundle left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedyolo.runtime.manifest import BACKBONE_FILE, MODULE_WEIGHTS, TRAINING_MODEL, read_manifest, sha256_file


def fedyolo(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real CLI. A narrow terminal: an error that rich wraps would show up as several lines."""
    env = {**os.environ, "COLUMNS": "50", "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "fedyolo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`, '<dir>' for folders; {} when `root` is absent."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): "<dir>" if p.is_dir() else sha256_file(p) for p in sorted(root.rglob("*"))
    }


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass(frozen=True)
class Case:
    """A user mistake: `prepare(tmp_path, bundle)` sets it up and returns the CLI arguments and the folder
    that must come out untouched (absent if it was absent)."""

    prepare: Callable[[Path, Path], tuple[list[str | Path], Path]]
    words: tuple[str, ...]  # the problem and the fix, as the one line must say them


EXPORT = ["export", "onnx"]
EXPORT_TINY_BERT = [*EXPORT, "--backbone", "tiny-bert"]


def unknown_module(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    out = tmp / "new"
    return [*EXPORT_TINY_BERT, "--module", "loar", "--out", out], out


def backbone_empty_dir(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "model").mkdir()
    out = tmp / "new"
    return [*EXPORT, "--backbone", tmp / "model", "--out", out], out


def backbone_junk_config(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    out = tmp / "new"
    return [*EXPORT, "--backbone", tmp / "model", "--out", out], out


def backbone_bad_config_value(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text('{"model_type": "bert", "hidden_size": "large"}')
    out = tmp / "new"
    return [*EXPORT, "--backbone", tmp / "model", "--out", out], out


def backbone_without_weights(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text('{"model_type": "bert"}')
    out = tmp / "new"
    return [*EXPORT, "--backbone", tmp / "model", "--out", out], out


def labels_not_in_task(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    rows = [{"text": "hello", "label": "greetings"}, {"text": "meow", "label": "cats"}]
    data = write_jsonl(tmp / "mine.jsonl", rows)
    return ["train", bundle, "--task", "topics", "--data", data, "--epochs", "1"], bundle


def empty_train_data(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "empty.jsonl").write_text("")
    return ["train", bundle, "--task", "topics", "--data", tmp / "empty.jsonl"], bundle


def empty_export_data(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "empty.csv").write_text("text,label\n")
    out = tmp / "new"
    return [*EXPORT_TINY_BERT, "--task", "mine", "--data", tmp / "empty.csv", "--out", out], out


def another_backbone(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    data = write_jsonl(
        tmp / "pets.jsonl", [{"text": "meow", "label": "cat"}, {"text": "woof", "label": "dog"}]
    )
    return [*EXPORT, "--backbone", "tiny-vit", "--task", "pets", "--data", data, "--out", bundle], bundle


def not_a_bundle(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    out = tmp / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    return [*EXPORT_TINY_BERT, "--out", out], out


def out_is_a_file(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "bundle.zip").write_bytes(b"PK")
    return [*EXPORT_TINY_BERT, "--out", tmp / "bundle.zip"], tmp / "bundle.zip"


def task_already_there(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    return [*EXPORT_TINY_BERT, "--task", "topics", "--out", bundle], bundle


def save_into_a_folder(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    (tmp / "results").mkdir()
    return ["train", bundle, "--task", "topics", "--epochs", "1", "--save", tmp / "results"], tmp / "results"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))


def corrupt_graph_then_train(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    flip_byte(bundle / "tasks" / "topics" / TRAINING_MODEL)
    return ["train", bundle, "--task", "topics", "--epochs", "1"], bundle


def corrupt_backbone_then_export(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    flip_byte(bundle / BACKBONE_FILE)
    return [*EXPORT_TINY_BERT, "--task", "language", "--out", bundle], bundle


def int8_task_into_fp32_bundle(tmp: Path, bundle: Path) -> tuple[list[str | Path], Path]:
    return [*EXPORT_TINY_BERT, "--task", "language", "--backbone-dtype", "int8", "--out", bundle], bundle


CASES = {
    "unknown module kind": Case(unknown_module, ("'loar'", "choose one of", "lora")),
    "backbone: empty dir": Case(backbone_empty_dir, ("not a model", "config.json", "minilm")),
    "backbone: junk config.json": Case(
        backbone_junk_config, ("config.json", "not valid JSON", "re-download")
    ),
    "backbone: bad config value": Case(backbone_bad_config_value, ("config.json", "hidden_size", "fix")),
    "backbone: no weights": Case(backbone_without_weights, ("cannot load the weights", "holds a model")),
    "train: labels not in the task": Case(
        labels_not_in_task, ("'cats'", "labels the task does not know", "--data")
    ),
    "train: empty data file": Case(empty_train_data, ("empty.jsonl", "no examples", "at least one")),
    "export: empty data file": Case(empty_export_data, ("empty.csv", "no examples", "at least one")),
    "out holds another backbone": Case(another_backbone, ("another backbone", "tiny-bert", "new --out")),
    "out is not a bundle": Case(not_a_bundle, ("photos", "not a fedyolo bundle", "empty or new --out")),
    "out is a file": Case(out_is_a_file, ("bundle.zip", "not a folder", "new or empty")),
    "task already in the bundle": Case(task_already_there, ("'topics' is already in", "--force")),
    "train: --save is a folder": Case(save_into_a_folder, ("results is a folder", "module.safetensors")),
    "corrupt graph, train": Case(corrupt_graph_then_train, (TRAINING_MODEL, "sha256", "re-export")),
    "int8 task, fp32 bundle": Case(
        int8_task_into_fp32_bundle, ("float32", "int8", "--backbone-dtype float32")
    ),
    "corrupt backbone, export": Case(corrupt_backbone_then_export, (BACKBONE_FILE, "sha256", "re-export")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_and_leaves_no_partial_bundle(
    bundle_copy: Path, tmp_path: Path, case: str
) -> None:
    # Prepare
    args, watched = CASES[case].prepare(tmp_path, bundle_copy)
    before, siblings = snapshot(watched), sorted(p.name for p in watched.parent.iterdir())
    was_file = watched.is_file() and sha256_file(watched)

    # Execute
    result = fedyolo(*args, cwd=tmp_path)

    # Assert: a non-zero exit and one line naming problem and fix
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in CASES[case].words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    # ... and nothing half-written: the folder as it was (or still absent), no temp folder beside it
    assert snapshot(watched) == before
    assert (watched.is_file() and sha256_file(watched)) == was_file
    assert sorted(p.name for p in watched.parent.iterdir()) == siblings


def test_an_image_task_given_text_data_says_what_it_takes(tmp_path: Path) -> None:
    # Prepare: a tiny ViT bundle, and the kind of file a text task takes
    from fedyolo.export.pipeline import export_onnx

    export_onnx(
        tmp_path / "b", "pets", ["cat", "dog"], backbone="tiny-vit", module="head", show_progress=False
    )
    data = write_jsonl(tmp_path / "pets.jsonl", [{"text": "meow", "label": "cat"}])
    before = snapshot(tmp_path / "b")

    # Execute
    result = fedyolo("train", "b", "--task", "pets", "--data", data, cwd=tmp_path)

    # Assert
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "takes images" in lines[0] and ".npz" in lines[0] and "np.savez" in lines[0]
    assert snapshot(tmp_path / "b") == before


def test_an_image_task_exports_and_trains_from_the_same_npz(tmp_path: Path) -> None:
    # Prepare: a user's images as `train` takes them, integer labels
    from fedyolo.export.backbones import load_backbone

    shape = load_backbone("tiny-vit").image_shape
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((12, *shape)).astype(np.float32)
    np.savez(tmp_path / "digits.npz", pixel_values=pixels, labels=np.array([0, 1, 2, 10] * 3))

    # Execute: every command that takes a task's data takes this file
    export = fedyolo(
        *EXPORT, "--backbone", "tiny-vit", "--module", "head", "--task", "digits",
        "--data", "digits.npz", "--out", "b", cwd=tmp_path,
    )  # fmt: skip
    train = fedyolo("train", "b", "--task", "digits", "--data", "digits.npz", "--epochs", "1", cwd=tmp_path)

    # Assert
    assert export.returncode == 0, export.stderr
    assert read_manifest(tmp_path / "b").tasks["digits"].labels == ("0", "1", "2", "10")
    assert train.returncode == 0, train.stderr


@pytest.mark.slow
def test_data_export_train_save(tmp_path: Path) -> None:
    # Prepare: the built-in task's splits as files, and a bundle, all through the CLI
    for split in ("train", "test"):
        made = fedyolo("data", "topics", "--split", split, "--out", f"{split}.jsonl", cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    exported = fedyolo(*EXPORT_TINY_BERT, "--task", "topics", "--out", "b", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "exported task 'topics'" in exported.stdout

    # Execute
    args = "train b --task topics --data train.jsonl --test-data test.jsonl --epochs 1 --lr 0.01"
    trained = fedyolo(*args.split(), "--save", "m.safetensors", cwd=tmp_path)

    # Assert: held-out accuracy printed; the module saved with the manifest's names and shapes, and trained
    assert trained.returncode == 0, trained.stderr
    assert "Traceback" not in trained.stderr
    stdout = " ".join(trained.stdout.split())  # rich wraps at the terminal's width
    assert "held-out accuracy after 1 epochs:" in stdout
    assert "%" in stdout.split("held-out accuracy")[1]
    spec = read_manifest(tmp_path / "b").task("topics")
    saved = load_file(str(tmp_path / "m.safetensors"))
    initial = load_file(str(tmp_path / "b" / "tasks" / "topics" / MODULE_WEIGHTS))
    assert {k: v.shape for k, v in saved.items()} == {t.name: t.shape for t in spec.trainable}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in saved.values())
    assert any(not np.array_equal(saved[k], initial[k]) for k in saved)
    test_rows = (tmp_path / "test.jsonl").read_text().splitlines()
    assert f"on {len(test_rows)} examples" in stdout


def test_help_needs_no_bundle(tmp_path: Path) -> None:
    # Execute
    result = fedyolo("--help", cwd=tmp_path)

    # Assert
    assert result.returncode == 0
    for command in ("data", "export", "train"):
        assert command in result.stdout
