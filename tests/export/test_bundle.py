"""The backbone is stored once and loaded once: tasks added to a bundle never rewrite or copy it, each
task carries only its module, and two tasks resident in one process share one backbone in memory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file

from fedyolo.export import bundle_writer
from fedyolo.export.backbones import load_backbone
from fedyolo.export.pipeline import build_task_model, export_onnx
from fedyolo.export.web_form import WEB_CHECKPOINT, WEB_EVAL_MODEL, WEB_PARAMS, WEB_TRAINING_MODEL
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.manifest import (
    BACKBONE_FILE,
    CHECKPOINT,
    EVAL_MODEL,
    MANIFEST_NAME,
    MODULE_WEIGHTS,
    TOKENIZER_FILE,
    TRAINING_MODEL,
    Manifest,
    read_manifest,
    sha256_file,
)
from fedyolo.runtime.ort_import import load_ort
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone

# task id -> module kind. `topics` (lora) comes from the session bundle; the others are added to it.
KINDS = {"topics": "lora", "adapter": "adapter", "prompt": "prompt", "head": "head", "full": "full"}
OTHER_LABELS = ("x", "y", "z")
SEEDS = {"head": 3}  # --seed seeds the module only: a task exported with another seed shares the backbone
GRAPHS = (TRAINING_MODEL, EVAL_MODEL)


@dataclass(frozen=True)
class BackboneFile:
    """What would change if backbone.bin were rewritten or replaced."""

    sha256: str
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, root: Path) -> BackboneFile:
        st = os.stat(root / BACKBONE_FILE)
        return cls(sha256_file(root / BACKBONE_FILE), st.st_ino, st.st_mtime_ns)


@dataclass(frozen=True)
class MultiTask:
    root: Path
    backbone_after: dict[str, BackboneFile]  # task id -> backbone.bin after that task was exported


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`, and '<dir>' for every folder."""
    return {
        str(p.relative_to(root)): "<dir>" if p.is_dir() else sha256_file(p) for p in sorted(root.rglob("*"))
    }


def labels_of(task_id: str) -> tuple[str, ...]:
    from fedyolo.tasks import load_task

    return load_task("topics").labels if task_id == "topics" else OTHER_LABELS


@pytest.fixture(scope="module")
def multi(tiny_bert_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> MultiTask:
    """The session bundle (task A = topics, lora), then adapter, prompt, head and full added to it."""
    root = Path(shutil.copytree(tiny_bert_bundle, tmp_path_factory.mktemp("multi") / "bundle"))
    after = {"topics": BackboneFile.of(root)}
    for task_id, kind in KINDS.items():
        if task_id == "topics":
            continue
        seed = SEEDS.get(task_id, 0)
        export_onnx(
            root, task_id, OTHER_LABELS, backbone="tiny-bert", module=kind, seed=seed, show_progress=False
        )
        after[task_id] = BackboneFile.of(root)
    return MultiTask(root, after)


def test_adding_tasks_never_rewrites_the_backbone(multi: MultiTask) -> None:
    # Prepare / Execute: done by the fixture (export A, then B, C, ... into the same --out)
    manifest = read_manifest(multi.root)

    # Assert: same bytes, same inode, same mtime, after every export; every task listed with its labels
    first = multi.backbone_after["topics"]
    for task_id, state in multi.backbone_after.items():
        assert state == first, f"backbone.bin changed when task {task_id!r} was added"
    assert manifest.backbone.file.sha256 == first.sha256
    assert set(manifest.tasks) == set(KINDS)
    for task_id, kind in KINDS.items():
        assert manifest.tasks[task_id].module_kind == kind
        assert manifest.tasks[task_id].labels == labels_of(task_id)


def test_bytes_on_disk_are_backbone_plus_tokenizer_plus_manifest_plus_tasks(multi: MultiTask) -> None:
    # Prepare
    manifest = read_manifest(multi.root)
    expected = {BACKBONE_FILE: manifest.backbone.file, TOKENIZER_FILE: manifest.tokenizer}
    for task_id, spec in manifest.tasks.items():
        expected.update({f"tasks/{task_id}/{name}": entry for name, entry in spec.files.items()})

    # Execute
    on_disk = {str(p.relative_to(multi.root)): p for p in multi.root.rglob("*") if p.is_file()}

    # Assert: no stray file (a temp folder, an old task, a second backbone), every file as hashed
    assert set(on_disk) == set(expected) | {MANIFEST_NAME}
    for rel, entry in expected.items():
        assert entry is not None
        assert sha256_file(on_disk[rel]) == entry.sha256, rel
        assert on_disk[rel].stat().st_size == entry.bytes, rel
    total = sum(p.stat().st_size for p in on_disk.values())
    assert total == sum(e.bytes for e in expected.values() if e) + on_disk[MANIFEST_NAME].stat().st_size
    open_bundle(multi.root)  # and a client accepts it


def test_task_files_hold_no_copy_of_the_backbone(multi: MultiTask) -> None:
    # Prepare: every backbone tensor as stored, and as PyTorch holds it (the stored linears are transposed)
    manifest = read_manifest(multi.root)
    blob = (multi.root / BACKBONE_FILE).read_bytes()
    needles = []
    for t in manifest.backbone.tensors:
        arr = np.frombuffer(blob[t.offset : t.offset + t.length], dtype=np.float32).reshape(t.shape)
        if np.unique(arr).size < 8:
            continue  # LayerNorm ones and zero biases: such bytes occur anywhere
        needles.append((t.name, arr.tobytes()[:4096]))
        if arr.ndim == 2:
            needles.append((t.name + " (untransposed)", np.ascontiguousarray(arr.T).tobytes()[:4096]))
    assert len(needles) > 10

    for task_id, spec in manifest.tasks.items():
        task_dir = multi.root / "tasks" / task_id
        # Execute / Assert: full fine-tuning ships the whole model as its module, by design; its graphs
        # still must not.
        names = GRAPHS if spec.module_kind == "full" else tuple(spec.files)
        for name in names:
            content = (task_dir / name).read_bytes()
            for tensor, needle in needles:
                assert needle not in content, f"{task_id}/{name} holds a copy of backbone tensor {tensor}"
        if spec.module_kind != "full":
            # The browser's form repeats the two graphs (web_form.py); it too holds no backbone (above).
            task_bytes = sum(e.bytes for n, e in spec.files.items() if not n.startswith("web"))
            assert task_bytes < manifest.backbone.file.bytes / 10, f"task {task_id} is not small"


@pytest.mark.parametrize("task_id", list(KINDS))
def test_graphs_read_frozen_tensors_from_the_shared_backbone_file(multi: MultiTask, task_id: str) -> None:
    # Prepare
    manifest = read_manifest(multi.root)
    stored = {t.name: t for t in manifest.backbone.tensors}

    for graph in GRAPHS:
        # Execute
        proto = onnx.load(str(multi.root / "tasks" / task_id / graph), load_external_data=False)
        external = [i for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        embedded = [i for i in proto.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL]

        # Assert: every frozen tensor is a reference (location, offset, length) into ../../backbone/backbone.bin;
        # what the graph embeds are the exporter's small constants, not weights.
        for init in external:
            info = {e.key: e.value for e in init.external_data}
            assert info["location"] == "../../" + BACKBONE_FILE
            assert init.name in stored, init.name
            assert (int(info["offset"]), int(info["length"])) == (
                stored[init.name].offset,
                stored[init.name].length,
            )
            assert tuple(init.dims) == stored[init.name].shape
        assert sum(len(i.raw_data) + 4 * len(i.float_data) for i in embedded) < 8 * 1024
        if KINDS[task_id] == "full":
            assert external == []  # every weight trains: the backbone reaches the graph as trainable inputs
        else:
            assert {i.name for i in external} == set(stored)


def pytorch_trainable(kind: str, labels: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    model, _ = build_task_model(load_backbone("tiny-bert"), kind, labels, seed=seed)
    return {n: p.detach().numpy() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("task_id", list(KINDS))
def test_trainable_tensors_are_pytorchs_requires_grad_ones(multi: MultiTask, task_id: str) -> None:
    # Prepare: the same model in PyTorch, built as the export builds it (same seeds)
    manifest = read_manifest(multi.root)
    spec = manifest.tasks[task_id]
    expected = pytorch_trainable(KINDS[task_id], labels_of(task_id), SEEDS.get(task_id, 0))
    task_dir = multi.root / "tasks" / task_id

    # Execute
    module = load_file(str(task_dir / MODULE_WEIGHTS))
    state = load_ort().load_checkpoint(str(task_dir / CHECKPOINT))

    # Assert: manifest, module.safetensors and the checkpoint hold exactly the requires_grad tensors
    assert [(t.name, t.shape) for t in spec.trainable] == [(n, a.shape) for n, a in expected.items()]
    assert len(spec.trainable) == len(expected) and spec.module_numel == sum(
        a.size for a in expected.values()
    )
    assert set(module) == set(expected)
    for name, value in expected.items():
        assert module[name].dtype == np.float32
        np.testing.assert_array_equal(module[name], value, err_msg=name)
    assert sorted(state.parameter_names()) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(state.get_parameter(name).data.numpy(), module[name], err_msg=name)
    # The checkpoint is the module's size (plus a header), not the backbone's.
    checkpoint_bytes = spec.files[CHECKPOINT].bytes
    assert spec.module_bytes <= checkpoint_bytes <= 1.1 * spec.module_bytes + 16 * 1024


def fixed_batch(labels: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((8, 16), dtype=np.int64)
    mask[2, 9:] = 0
    return {
        "input_ids": rng.integers(1000, 3000, (8, 16)),
        "attention_mask": mask,
        "labels": rng.integers(0, labels, 8),
    }


def maps_a_file(arr: np.ndarray) -> bool:
    base: object = arr
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return False


def test_two_resident_tasks_share_one_backbone_and_both_learn(multi: MultiTask) -> None:
    # Prepare: one SharedBackbone, two tasks over it (lora on topics, adapter on x/y/z)
    bundle = open_bundle(multi.root, tasks=["topics", "adapter"])
    shared = SharedBackbone(bundle)
    a = OrtTrainer(bundle, "topics", backbone=shared, lr=3e-2)
    b = OrtTrainer(bundle, "adapter", backbone=shared, lr=3e-2)
    batch_a, batch_b = fixed_batch(len(bundle.task("topics").labels), 1), fixed_batch(3, 2)

    # Execute: train them alternately
    losses_a, losses_b = [], []
    for _ in range(20):
        losses_a.append(a.step(batch_a))
        losses_b.append(b.step(batch_b))
    module_a = a.get_module()
    b.step(batch_b)

    # Assert: one backbone, mapped from the bundle's file, not copied; both learn; B's step leaves A as it was
    assert a.backbone is b.backbone is shared
    for name, arr in shared.arrays.items():
        assert maps_a_file(arr), name
    assert losses_a[-1] < 0.75 * losses_a[0], losses_a
    assert losses_b[-1] < 0.75 * losses_b[0], losses_b
    for name, value in a.get_module().items():
        np.testing.assert_array_equal(value, module_a[name])


def fail_on_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the last stage of a bundle write (the manifest swap) fail, as a full disk or a kill would."""

    def broken(root: Path, manifest: Manifest) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_writer, "_write_manifest", broken)


def test_a_failed_task_export_leaves_the_bundle_as_it_was(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    before = snapshot(bundle_copy)
    fail_on_manifest(monkeypatch)

    # Execute
    with pytest.raises(OSError, match="No space"):
        export_onnx(
            bundle_copy, "second", OTHER_LABELS, backbone="tiny-bert", module="head", show_progress=False
        )

    # Assert: byte for byte the previous bundle, no staged or old task folder left behind
    assert snapshot(bundle_copy) == before


def test_a_second_task_builds_and_hashes_the_backbone_once(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: count every backbone.bin built, every sha256 of it, and every file hashed from disk
    from fedyolo.export import backbone_store
    from fedyolo.runtime import manifest

    builds: list[int] = []
    blob_hashes: list[int] = []
    files_hashed: list[str] = []
    build, sha256, sha256_file = backbone_store.backbone_bytes, hashlib.sha256, manifest.sha256_file

    def counting_build(arrays: dict[str, np.ndarray]) -> tuple[bytes, tuple[manifest.TensorSpec, ...]]:
        builds.append(1)
        return build(arrays)

    def counting_sha256(data: bytes = b"") -> hashlib._Hash:
        blob_hashes.append(len(data))
        return sha256(data)

    def counting_file(path: str | os.PathLike[str]) -> str:
        files_hashed.append(Path(path).name)
        return sha256_file(path)

    monkeypatch.setattr(backbone_store, "backbone_bytes", counting_build)
    monkeypatch.setattr(backbone_store.hashlib, "sha256", counting_sha256)
    monkeypatch.setattr(manifest, "sha256_file", counting_file)

    # Execute
    export_onnx(bundle_copy, "second", OTHER_LABELS, backbone="tiny-bert", module="head", show_progress=False)

    # Assert: built once and hashed once in memory; backbone.bin is compared, never hashed from disk
    backbone_bytes = (bundle_copy / BACKBONE_FILE).stat().st_size
    assert builds == [1]
    assert blob_hashes.count(backbone_bytes) == 1
    assert "backbone.bin" not in files_hashed


def test_a_failed_new_bundle_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    parent = tmp_path / "exports"
    parent.mkdir()
    fail_on_manifest(monkeypatch)

    # Execute
    with pytest.raises(OSError, match="No space"):
        export_onnx(
            parent / "bundle", "t", OTHER_LABELS, backbone="tiny-bert", module="head", show_progress=False
        )

    # Assert: neither the bundle nor its temp folder
    assert list(parent.iterdir()) == []


def test_bundle_files_are_readable_as_the_umask_allows(multi: MultiTask) -> None:
    # Prepare
    umask = os.umask(0)
    os.umask(umask)

    # Execute / Assert: not the 0700/0600 of temp folders and safetensors files (a server must read them)
    for path in (multi.root, *multi.root.rglob("*")):
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == want, path


def test_the_browser_form_trains_as_the_bundle_does_for_every_kind(multi: MultiTask) -> None:
    # Prepare: per task, the parameter buffer as the page assembles it from web.json (backbone.bin
    # slices and module tensors), loaded into the browser form's graphs by the same ORT call it makes
    C = load_ort()
    bundle = open_bundle(multi.root)
    backbone = np.fromfile(bundle.backbone_path, dtype=np.uint8)
    device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
    for task_id in KINDS:
        task_dir, spec = bundle.task_dir(task_id), bundle.task(task_id)
        layout = json.loads((task_dir / WEB_PARAMS).read_text())
        module = load_file(str(task_dir / MODULE_WEIGHTS))
        buffer = np.concatenate(
            [
                backbone[p["offset"] : p["offset"] + p["length"]].view(np.float32)
                if p["from"] == "backbone"
                else module[p["name"]].ravel()
                for p in layout["params"]
            ]
        )
        state = C.load_checkpoint(str(task_dir / WEB_CHECKPOINT))
        web = C.Module(
            str(task_dir / WEB_TRAINING_MODEL),
            state,
            str(task_dir / WEB_EVAL_MODEL),
            device,
            C.SessionOptions(),
        )
        web.copy_buffer_to_parameters(C.OrtValue.ortvalue_from_numpy(buffer, device), False)
        rng = np.random.default_rng(0)
        batch = {
            "input_ids": rng.integers(1000, 2000, (4, spec.input.max_length), dtype=np.int64),
            "attention_mask": np.ones((4, spec.input.max_length), dtype=np.int64),
            "labels": rng.integers(0, len(spec.labels), 4, dtype=np.int64),
        }
        # Execute
        outputs = C.OrtValueVector()
        web.train_step([batch[n] for n in web.input_names(True)], outputs)
        loss = float(outputs[0].numpy())
        web_grads = {t.name: np.array(state.get_parameter(t.name).grad.numpy()) for t in spec.trainable}
        del outputs, web, state  # the module before the state it points into (ORT frees in that order)
        expected, grads = OrtTrainer(bundle, task_id).gradients(batch)
        # Assert: same loss, same gradients, every trainable tensor among the page's module parameters
        assert loss == pytest.approx(expected, rel=1e-6), task_id
        for name, grad in grads.items():
            np.testing.assert_allclose(web_grads[name], grad, rtol=1e-4, atol=1e-7, err_msg=task_id)
        assert {p["name"] for p in layout["params"] if p["from"] == "module"} == {
            t.name for t in spec.trainable
        }
        assert (task_dir / WEB_CHECKPOINT).stat().st_size < 20_000 or spec.module_kind == "full"  # nominal
