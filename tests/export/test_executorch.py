"""The ExecuTorch backend against PyTorch eager and the ONNX path, for every module kind on tiny BERT and
tiny ViT: first-step loss and gradients, AdamW trajectories, modules crossing backends both ways, the
frozen backbone's data stored once, and the errors a user meets."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch", reason="the 'executorch' extra is not installed (make setup installs it)")

from fedyolo.runtime.backends import make_trainer
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.errors import BundleError, FedyoloError
from fedyolo.runtime.executorch_files import BACKBONE_DATA_FILE, PROGRAM
from fedyolo.runtime.manifest import read_manifest, sha256_file
from fedyolo.runtime.trainer import Batch

KINDS = ("lora", "adapter", "prompt", "head", "full")
LABELS = ("a", "b", "c")
PROGRAM_BATCH = 4  # the batches below hold 6 rows: one full piece and one padded piece
# fp32 over the same graph computed by three runtimes: measured differences are ~1e-6 relative
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4  # of the tensor's largest gradient


def export_all(out: Path, backbone: str) -> Path:
    from fedyolo.export.executorch_bundle import export_executorch

    for kind in KINDS:
        export_executorch(out, kind, LABELS, backbone, kind, max_length=16, batch=PROGRAM_BATCH,
                          show_progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-vit"])
def et_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_all(tmp_path_factory.mktemp("et") / "bundle", str(request.param))


def make_batch(bundle_dir: Path, n: int = 6, seed: int = 0) -> Batch:
    spec = read_manifest(bundle_dir).tasks["lora"].input
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n).astype(np.int64)
    if spec.kind == "image":
        return {
            "pixel_values": rng.standard_normal((n, *spec.image_shape)).astype(np.float32),
            "labels": labels,
        }
    mask = np.ones((n, spec.max_length), np.int64)
    mask[1, spec.max_length // 2 :] = 0
    ids = rng.integers(5, 90, (n, spec.max_length)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def torch_reference(
    bundle_dir: Path, kind: str, batch: Batch, backbone: str | None = None
) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of PyTorch eager on the task model with the bundle's initial module (backbone:
    its name for `load_backbone` where that is not the manifest's id, as for `minilm`)."""
    import torch

    from fedyolo.export.backbones import load_backbone
    from fedyolo.export.executorch_bundle import _load_module
    from fedyolo.export.pipeline import build_task_model

    bundle = open_bundle(bundle_dir, tasks=[kind])
    spec = bundle.task(kind)
    bb = load_backbone(backbone or bundle.manifest.backbone.id)
    model, _ = build_task_model(bb, kind, LABELS, spec.module_config)
    _load_module(model, initial_module(bundle, kind))
    model.eval()
    features = [torch.from_numpy(batch[n]) for n in spec.input.names]
    loss = torch.nn.functional.cross_entropy(model(*features), torch.from_numpy(batch["labels"]))
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


def assert_close_grads(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert set(got) == set(want), what
    for name, g in want.items():
        scale = float(np.abs(g).max()) + 1e-12
        err = float(np.abs(got[name] - g).max())
        assert err <= GRAD_TOL * scale + 1e-7, f"{what}: {name} differs by {err:.2e} (largest {scale:.2e})"


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_first_step_loss_and_gradients_equal_torch_and_onnx(et_bundle: Path, kind: str) -> None:
    # Arrange
    bundle = open_bundle(et_bundle, tasks=[kind])
    batch = make_batch(et_bundle)
    et, ort = make_trainer(bundle, kind, "executorch"), make_trainer(bundle, kind, "ort")

    # Act
    want_loss, want_grads = torch_reference(et_bundle, kind, batch)
    et_loss, et_grads = et.gradients(batch)  # type: ignore[attr-defined]
    ort_loss, ort_grads = ort.gradients(batch)  # type: ignore[attr-defined]

    # Assert
    assert et_loss == pytest.approx(want_loss, rel=LOSS_RTOL)
    assert et_loss == pytest.approx(ort_loss, rel=LOSS_RTOL)
    assert_close_grads(et_grads, want_grads, f"{kind}: executorch vs torch")
    assert_close_grads(et_grads, ort_grads, f"{kind}: executorch vs onnx")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_a_padded_batch_runs_at_its_longest_text_with_the_same_loss(et_bundle: Path, kind: str) -> None:
    # Arrange: every text ends by column 5 of 16, as short real texts do
    bundle = open_bundle(et_bundle, tasks=[kind])
    spec = bundle.task(kind)
    batch = make_batch(et_bundle)
    et = make_trainer(bundle, kind, "executorch")
    lengths: list[int] = []
    run = et._call  # type: ignore[attr-defined]

    def recording(inputs: list[object]) -> object:
        lengths.append(int(np.shape(inputs[0])[1]) if np.ndim(inputs[0]) == 2 else 0)
        return run(inputs)

    et._call = recording  # type: ignore[attr-defined]
    if spec.input.kind == "text":
        batch["attention_mask"][:, 5:] = 0
        batch["input_ids"][:, 5:] = 0

    # Act
    want_loss, want_grads = torch_reference(et_bundle, kind, batch)
    et_loss, et_grads = et.gradients(batch)  # type: ignore[attr-defined]

    # Assert: same loss and gradients as PyTorch on all 16 columns, computed on fewer
    assert et_loss == pytest.approx(want_loss, rel=LOSS_RTOL)
    assert_close_grads(et_grads, want_grads, f"{kind}: executorch on trimmed columns vs torch")
    if spec.input.kind == "image":
        assert spec.executorch_min_length == 0 and set(lengths) == {0}
    else:
        assert 2 <= spec.executorch_min_length < spec.input.max_length
        assert set(lengths) == {max(5, spec.executorch_min_length)}


@pytest.mark.slow
def test_adamw_steps_follow_onnx_runtime(et_bundle: Path) -> None:
    # Arrange
    bundle = open_bundle(et_bundle, tasks=["lora"])
    batch = make_batch(et_bundle, n=7)
    et, ort = (
        make_trainer(bundle, "lora", "executorch", lr=1e-2),
        make_trainer(bundle, "lora", "ort", lr=1e-2),
    )

    # Act
    losses = [(et.step(batch), ort.step(batch)) for _ in range(5)]

    # Assert: the same losses step after step, and the same weights after five AdamW steps
    for et_loss, ort_loss in losses:
        assert et_loss == pytest.approx(ort_loss, rel=1e-5)
    assert losses[-1][0] < losses[0][0]
    got, want = et.get_module(), ort.get_module()
    assert max(float(np.abs(got[n] - want[n]).max()) for n in want) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("train_on", "evaluate_on"), [("executorch", "ort"), ("ort", "executorch")])
def test_a_module_trained_on_one_backend_evaluates_identically_on_the_other(
    et_bundle: Path, train_on: str, evaluate_on: str
) -> None:
    # Arrange
    bundle = open_bundle(et_bundle, tasks=["adapter"])
    train, test = make_batch(et_bundle, seed=1), make_batch(et_bundle, n=9, seed=2)
    trainer, other = make_trainer(bundle, "adapter", train_on), make_trainer(bundle, "adapter", evaluate_on)
    for _ in range(3):
        trainer.step(train)

    # Act
    other.set_module(trainer.get_module())

    # Assert
    here, there = trainer.evaluate([test]), other.evaluate([test])
    assert there.loss == pytest.approx(here.loss, rel=1e-5)
    assert there.accuracy == here.accuracy
    np.testing.assert_allclose(other.predict(test), trainer.predict(test), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_frozen_backbone_is_stored_once_for_every_task(et_bundle: Path, tmp_path: Path) -> None:
    # Arrange
    manifest = read_manifest(et_bundle)
    data = et_bundle / BACKBONE_DATA_FILE
    before = sha256_file(data)

    # Act: a sixth task over the same backbone
    from fedyolo.export.executorch_bundle import export_executorch

    out = Path(shutil.copytree(et_bundle, tmp_path / "b"))
    export_executorch(out, "second", LABELS, manifest.backbone.id, "lora", max_length=16, batch=2,
                      seed=3, show_progress=False)  # fmt: skip

    # Assert: one data file, by hash unchanged, as large as the backbone; programs of frozen-backbone
    # kinds hold their module and graph, not the backbone (tiny ViT's backbone is smaller than a graph)
    assert sorted(p.name for p in (out / "backbone").iterdir()) == ["backbone.bin", "backbone.ptd"]
    assert (
        sha256_file(out / BACKBONE_DATA_FILE) == before == read_manifest(out).backbone.executorch_data.sha256
    )  # type: ignore[union-attr]
    assert data.stat().st_size >= manifest.backbone.full_model_bytes
    for kind in ("lora", "adapter", "prompt", "head"):
        program = et_bundle / "tasks" / kind / PROGRAM
        module_bytes = manifest.tasks[kind].module_bytes
        assert program.stat().st_size < module_bytes + 300_000, kind
    assert (et_bundle / "tasks" / "full" / PROGRAM).stat().st_size >= manifest.backbone.full_model_bytes
    second = make_trainer(open_bundle(out, tasks=["second"]), "second", "executorch")
    assert np.isfinite(second.step(make_batch(out, n=3)))


def test_a_bundle_without_programs_names_the_export_command(tiny_bert_bundle: Path) -> None:
    bundle = open_bundle(tiny_bert_bundle, tasks=["topics"])
    with pytest.raises(BundleError, match=r"fedyolo export executorch --task topics --module lora"):
        make_trainer(bundle, "topics", "executorch")
    with pytest.raises(FedyoloError, match="unknown backend 'tflite'; choose one of: ort, executorch"):
        make_trainer(bundle, "topics", "tflite")


def test_a_damaged_backbone_data_file_is_refused(tmp_path: Path) -> None:
    from fedyolo.export.executorch_bundle import export_executorch

    out = tmp_path / "b"
    export_executorch(out, "t", LABELS, "tiny-bert", "head", max_length=8, batch=2, show_progress=False)
    raw = bytearray((out / BACKBONE_DATA_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (out / BACKBONE_DATA_FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"backbone\.ptd is missing or fails its sha256 check"):
        make_trainer(open_bundle(out, tasks=["t"]), "t", "executorch")


def test_the_manifest_of_an_onnx_only_bundle_still_reads(tiny_bert_bundle: Path) -> None:
    spec = read_manifest(tiny_bert_bundle).tasks["topics"]
    assert spec.executorch_batch == 0 and PROGRAM not in spec.files
    assert dataclasses.asdict(read_manifest(tiny_bert_bundle).backbone)["executorch_data"] is None


@pytest.mark.slow
def test_minilm_lora_first_step_equals_torch_and_onnx(tmp_path: Path) -> None:
    # Arrange: the default case's task model, batch 8 (the program's own batch: no padding)
    from fedyolo.export.executorch_bundle import export_executorch

    export_executorch(tmp_path / "b", "lora", LABELS, "minilm", "lora", max_length=16, batch=8,
                      show_progress=False)  # fmt: skip
    bundle = open_bundle(tmp_path / "b", tasks=["lora"])
    batch = make_batch(tmp_path / "b", n=8)
    batch["input_ids"] = batch["input_ids"] + 1000  # real word pieces, not [unused] ones

    # Act
    want_loss, want_grads = torch_reference(tmp_path / "b", "lora", batch, backbone="minilm")
    et_loss, et_grads = make_trainer(bundle, "lora", "executorch").gradients(batch)  # type: ignore[attr-defined]
    ort_loss, ort_grads = make_trainer(bundle, "lora", "ort").gradients(batch)  # type: ignore[attr-defined]

    # Assert
    assert et_loss == pytest.approx(want_loss, rel=LOSS_RTOL) and et_loss == pytest.approx(
        ort_loss, rel=LOSS_RTOL
    )
    assert_close_grads(et_grads, want_grads, "minilm lora: executorch vs torch")
    assert_close_grads(et_grads, ort_grads, "minilm lora: executorch vs onnx")
