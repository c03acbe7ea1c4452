"""`fedyolo data` and a user's own task file: what lands on disk and the line the user reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedyolo.runtime.data import Example, read_examples
from fedyolo.runtime.errors import DataError
from fedyolo.tasks import data_command, load_task, task_from_file, write_examples


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_write_examples_round_trips_through_read_examples(tmp_path: Path, suffix: str) -> None:
    # Prepare
    examples = [Example('say "hi", then\nleave', "a,b"), Example("你好 wörld", "7")]
    # Execute
    path = write_examples(examples, tmp_path / "sub" / f"out{suffix}")
    # Assert
    assert read_examples(path) == examples


def test_write_examples_refuses_unknown_suffix(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match=r"cannot write data as '.txt'.*\.jsonl"):
        write_examples([Example("a", "b")], tmp_path / "out.txt")


def test_task_from_file_dedupes_sorts_labels_and_splits(tmp_path: Path) -> None:
    # Prepare
    rows = [{"text": f"text {i}", "label": i % 3} for i in range(30)] + [{"text": "TEXT 0", "label": 0}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Execute
    task = task_from_file(path)
    again = task_from_file(path)
    # Assert
    assert task.name == "mine" and task.labels == ("0", "1", "2")
    assert len(task.train) + len(task.test) == 30
    assert len(task.test) == 6 and {e.label for e in task.test} == {"0", "1", "2"}
    assert task == again
    assert task_from_file(path, name="other", test_fraction=0.5, seed=1).name == "other"


def test_task_from_file_needs_two_labels(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "one.csv"
    path.write_text("text,label\na,x\nb,x\n")
    # Execute / Assert
    with pytest.raises(DataError, match="every example has the label 'x'"):
        task_from_file(path)


def test_data_command_writes_the_train_split_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = tmp_path / "topics.jsonl"
    # Execute
    line = data_command("topics", out)
    # Assert
    assert read_examples(out) == load_task("topics").train
    assert capsys.readouterr().out == line + "\n"
    assert line == f"topics train: 1,497 examples, 21 of 21 labels, majority 'trivia' 27.3% -> {out}"


def test_data_command_test_and_all_splits(tmp_path: Path) -> None:
    # Execute
    test_line = data_command("topics", tmp_path / "test.csv", split="test")
    all_line = data_command("topics", tmp_path / "all.jsonl", split="all")
    # Assert
    assert "topics test: 375 examples" in test_line
    assert len(read_examples(tmp_path / "test.csv")) == 375
    assert "topics all: 1,872 examples" in all_line


def test_data_command_writes_one_client_or_every_client(tmp_path: Path) -> None:
    # Prepare
    task = load_task("topics")
    # Execute
    one = data_command("topics", tmp_path / "c2.jsonl", clients=4, alpha=0.1, seed=5, client=2)
    every = data_command("topics", tmp_path / "topics.jsonl", clients=4, alpha=0.1, seed=5)
    # Assert
    parts = [read_examples(tmp_path / f"topics-client{i}.jsonl") for i in range(4)]
    assert read_examples(tmp_path / "c2.jsonl") == parts[2]
    assert sorted(e.text for p in parts for e in p) == sorted(e.text for e in task.train)
    assert "4 clients (alpha 0.1, seed 5), client 2:" in one
    assert "sizes " + ", ".join(str(len(p)) for p in parts) in every


def test_data_command_reads_a_users_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "mine.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(10)))
    # Execute
    line = data_command(str(path), tmp_path / "out.jsonl", split="all")
    # Assert
    assert line.startswith("mine all: 10 examples, 2 of 2 labels, majority 'a' 50.0%")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "sentiment"}, r"no built-in task 'sentiment' \(built-in: topics, language\).*path"),
        ({"name": "topics", "split": "dev"}, "no split 'dev'; choose one of train, test, all"),
        ({"name": "topics", "client": 1}, "--client needs --clients"),
        ({"name": "topics", "clients": 3, "split": "test"}, "clients partition the train split"),
        ({"name": "topics", "clients": 3, "client": 3}, "--client 3 is not one of the 3 clients; use 0 to 2"),
        ({"name": "topics", "clients": 3, "alpha": -1.0}, "alpha must be a positive number"),
    ],
)
def test_data_command_errors_name_the_fix(tmp_path: Path, kwargs: dict[str, Any], expected: str) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match=expected):
        data_command(out=tmp_path / "out.jsonl", **kwargs)
    assert not (tmp_path / "out.jsonl").exists()
