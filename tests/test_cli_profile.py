"""`fedyolo profile`, `predict` and `export onnx-inference` as a user runs them (a subprocess each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fedyolo.runtime.backends import BACKENDS
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.compute_floor import matmul_flops
from fedyolo.runtime.manifest import MANIFEST_NAME, TRAINING_MODEL, file_entry
from tests.test_cli import fedyolo


def test_matmul_flops_reads_k_from_either_layout() -> None:
    assert matmul_flops([8, 32, 64], [8, 32, 16]) == 2 * 8 * 32 * 16 * 64  # A [.., M, K]
    assert matmul_flops([256, 8], [32, 8]) == 2 * 32 * 8 * 256  # Aᵀ: A [K, M] (a weight gradient)
    assert matmul_flops([64], [16]) == 2 * 16 * 64


def test_profile_reports_time_memory_bytes_and_the_compute_floor(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    # Execute: two batch sizes on one thread, JSON and PNG
    done = fedyolo(
        "profile", tiny_bert_bundle, "--task", "topics", "--batch", "1,4", "--seq", "16", "--threads", "1",
        "--steps", "5", "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png", cwd=tmp_path,
    )  # fmt: skip

    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    one, four = report["rows"]
    for row in (one, four):
        assert 0 < row["step_ms_median"] <= row["step_ms_p95"] <= row["step_ms_p99"]
        assert row["first_step_ms"] > 0 and row["load_s"] > 0 and row["infer_ms_per_example"] > 0
        assert row["examples_per_s"] == pytest.approx(1e3 * row["case"]["batch"] / row["step_ms_median"])
        rss = row["rss"]
        # the split accounts for the peak, and the backbone's resident pages are at most its file
        assert rss["runtime"] + rss["backbone"] + rss["module_optimizer"] + rss["activations"] == rss["peak"]
        assert 0 < rss["backbone"] <= report["sizes"]["backbone_bytes"] + 4096
        assert row["floor_ms"] > 0 and row["step_over_floor"] > 0 and row["losses_finite"]
        assert row["estimated_bytes"] < rss["peak"]  # a floor, never a promise
    # every GEMM of the step grows with the batch, so the counted FLOPs do too, exactly
    assert four["step_flops"] / one["step_flops"] == pytest.approx(4.0, rel=1e-6)
    assert report["gemm_gflops"]["1"] > 0.1
    sizes = report["sizes"]
    assert sizes["backbone_bytes"] == (tiny_bert_bundle / "backbone" / "backbone.bin").stat().st_size
    module_values = sum(t.numel for t in open_bundle(tiny_bert_bundle, verify=False).task("topics").trainable)
    wire = sizes["round_bytes_each_way"]
    assert 4 * module_values < wire["float32"] < 4 * module_values + 8192
    assert 2 * module_values < wire["float16"] < wire["float32"]
    assert {r["case"]["backend"] for r in report["rows"]} | {s["backend"] for s in report["skipped"]} == set(
        BACKENDS
    )
    assert all(s["reason"] for s in report["skipped"])
    assert {"cpu", "nproc", "load_avg", "onnxruntime"} <= set(report["machine"])
    png = (tmp_path / "r.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert "task topics on" in done.stdout  # the table (squeezed by the 50-column terminal)


def test_sustained_mode_runs_for_its_duration_and_reports_drift(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    done = fedyolo(
        "profile", tiny_bert_bundle, "--task", "topics", "--seq", "16", "--threads", "1", "--duration", "3",
        "--json", tmp_path / "r.json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    (row,) = report["rows"]
    (drift,) = report["drift"]
    assert sum(row["step_ms"]) / 1e3 == pytest.approx(3.0, abs=1.0)
    assert drift["steps"] == len(row["step_ms"]) > 10
    assert drift["last_over_first"] == pytest.approx(drift["last_tenth_ms"] / drift["first_tenth_ms"])
    assert "sustained" in done.stdout


def as_executorch_export(bundle: Path) -> None:
    """Make the bundle's task look like an ExecuTorch export: a program file, no ORT training graph."""
    (bundle / "tasks" / "topics" / "program.pte").write_bytes(b"not really a program")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    files = manifest["tasks"]["topics"]["files"]
    del files[TRAINING_MODEL]
    entry = file_entry(bundle / "tasks" / "topics" / "program.pte")
    files["program.pte"] = {"sha256": entry.sha256, "bytes": entry.bytes}
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["profile", "--task", "topics", "--backend", "ort"],
            "error: task 'topics' in this bundle was exported for executorch, not ort; use --backend executorch "
            "or re-export it with `fedyolo export onnx`",
        ),
        (
            ["predict", "--task", "topics", "hello"],
            "error: task 'topics' in this bundle was exported for executorch, not ort; use --backend executorch "
            "or re-export it with `fedyolo export onnx`",
        ),
    ],
)
def test_a_bundle_for_another_backend_is_one_clear_line(
    bundle_copy: Path, tmp_path: Path, args: list[str], line: str
) -> None:
    as_executorch_export(bundle_copy)
    done = fedyolo(args[0], bundle_copy, *args[1:], cwd=tmp_path)
    assert (done.returncode, done.stderr.strip()) == (2, line)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--task", "sentiment"], "error: task 'sentiment' is not in this bundle (tasks: topics)"),
        (
            ["--task", "topics", "--seq", "129"],
            "longer than backbone 'tiny-bert' allows (128 positions); use --seq 128 or less",
        ),
        (["--task", "topics", "--batch", "10000000", "--seq", "128"], "MiB is available; use --batch"),
        (["--task", "topics", "--batch", "8,x"], "error: --batch '8,x' is not a comma-separated list"),
        (
            ["--task", "topics", "--backend", "tpu"],
            "error: unknown backend 'tpu'; choose from ort, executorch",
        ),
    ],
)
def test_profile_refuses_what_cannot_run_before_running(
    tiny_bert_bundle: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    done = fedyolo("profile", tiny_bert_bundle, *args, "--json", tmp_path / "r.json", cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_predict_shows_the_label_a_trained_module_prefers(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    # Prepare: a module whose head strongly prefers one label, saved as `fedyolo train --save` does
    bundle = open_bundle(tiny_bert_bundle, verify=False)
    labels = bundle.task("topics").labels
    module = initial_module(bundle, "topics")
    module["head.bias"] = np.where(np.arange(len(labels)) == 5, 20.0, 0.0).astype(np.float32)
    save_file(module, str(tmp_path / "m.safetensors"))

    # Execute: through the bundle's trainer, then through the inference export (fp32 and int8)
    direct = fedyolo("predict", tiny_bert_bundle, "--task", "topics", "--module", tmp_path / "m.safetensors",
                     "how are you today?", "what is python?", "--top", "1", cwd=tmp_path)  # fmt: skip
    exported = fedyolo("export", "onnx-inference", tiny_bert_bundle, "--task", "topics", "--module",
                       tmp_path / "m.safetensors", "--out", tmp_path / "infer", cwd=tmp_path)  # fmt: skip
    quantized = fedyolo("export", "onnx-inference", tiny_bert_bundle, "--task", "topics", "--module",
                        tmp_path / "m.safetensors", "--out", tmp_path / "infer8", "--int8", cwd=tmp_path)  # fmt: skip
    via_export = fedyolo("predict", tmp_path / "infer", "how are you today?", "--top", "1", cwd=tmp_path)
    via_int8 = fedyolo("predict", tmp_path / "infer8", "how are you today?", "--top", "1", cwd=tmp_path)

    # Assert
    for done in (direct, exported, quantized, via_export, via_int8):
        assert done.returncode == 0, done.stderr[-2000:]
    for done in (direct, via_export, via_int8):
        rows = [line for line in done.stdout.splitlines() if labels[5] in line]
        assert rows and all("1.000" in row for row in rows)
    assert direct.stdout.count(labels[5]) == 2
    assert (
        "hard link to the bundle's" in exported.stdout
        and "int8 weights inside model.onnx" in quantized.stdout
    )
