"""No forgetting with one module per task: training `language` after `topics` leaves the topics module
bit-identical and its accuracy unchanged, where one shared module trained on both in sequence loses
what it knew about topics."""

from __future__ import annotations

from pathlib import Path

from fedyolo.experiments.forgetting import TaskSplit, joint_labels, run_forgetting
from fedyolo.runtime.bundle import open_bundle
from fedyolo.tasks import load_task
from fedyolo.tasks.shares import stratified_sample


def test_separate_modules_do_not_forget_a_shared_one_does(tmp_path: Path) -> None:
    # Prepare: tiny BERT, three tasks over one backbone: topics, language and a shared one over both
    from fedyolo.export.pipeline import export_onnx

    topics, language = load_task("topics"), load_task("language")
    labels = {"topics": topics.labels, "language": language.labels, "shared": joint_labels(
        {"topics": topics.labels, "language": language.labels}
    )}  # fmt: skip
    for task, names in labels.items():
        export_onnx(tmp_path / "b", task, names, backbone="tiny-bert", max_length=16, show_progress=False)
    bundle = open_bundle(tmp_path / "b")
    first = TaskSplit("topics", stratified_sample(topics.train, 320, 0), topics.test)
    second = TaskSplit("language", stratified_sample(language.train, 320, 0), language.test[:400])

    # Execute
    result = run_forgetting(bundle, first, second, "shared", epochs=3, lr=5e-3, batch_size=16)

    # Assert
    assert result.separate_sha256_after == result.separate_sha256_before
    assert result.separate_after == result.separate_before
    assert result.shared_before > 0.1  # it had learnt something about topics ...
    assert result.shared_after < result.shared_before / 2  # ... and lost most of it to language
