"""The built-in tasks: the numbers DESIGN.md states, no leak between train and test, a fixed split."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from fedyolo.runtime.errors import DataError
from fedyolo.tasks import BUILTIN_TASKS, load_task, text_key

TOPICS_TEST_SHA256 = "9422534c88b59c32b23888f71739f5b6072408e62404717c6c7d39e0a41f797f"


def test_builtin_task_names() -> None:
    # Assert
    assert BUILTIN_TASKS == ("topics", "language")


def test_topics_is_1872_distinct_texts_over_21_categories_majority_27_percent() -> None:
    # Execute
    task = load_task("topics")
    # Assert
    examples = task.train + task.test
    counts = Counter(e.label for e in examples)
    assert len(task.labels) == 21 and task.labels == tuple(sorted(task.labels))
    assert {"ai", "tech_support", "trivia"} <= set(task.labels) and set(counts) == set(task.labels)
    assert len(examples) == 1872
    assert len({text_key(e.text) for e in examples}) == 1872
    assert counts.most_common(1)[0][0] == "trivia"
    assert 0.26 < counts["trivia"] / len(examples) < 0.28
    assert 0.19 < len(task.test) / len(examples) < 0.21


def test_topics_resolves_a_text_in_two_categories_by_majority() -> None:
    # Prepare: "Hello" is 4 times in greetings.yml and once in conversations.yml
    task = load_task("topics")
    # Execute
    hello = [e for e in task.train + task.test if text_key(e.text) == "hello"]
    # Assert
    assert [e.label for e in hello] == ["greetings"]


def test_language_is_28_languages_without_texts_shared_between_them() -> None:
    # Execute
    task = load_task("language")
    # Assert
    examples = task.train + task.test
    counts = Counter(e.label for e in examples)
    assert len(task.labels) == 28 and set(counts) == set(task.labels)
    assert {"english", "chinese", "traditionalchinese", "telugu"} <= set(task.labels)
    assert counts["english"] == max(counts.values())
    assert 13_000 < len(examples) < 13_914  # 13,914 distinct within languages, less those in two
    by_key: dict[str, set[str]] = {}
    for e in examples:
        by_key.setdefault(text_key(e.text), set()).add(e.label)
    assert len(by_key) == len(examples)
    assert all(len(labels) == 1 for labels in by_key.values())


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_no_text_is_in_both_train_and_test_and_every_label_is_tested(name: str) -> None:
    # Execute
    task = load_task(name)
    # Assert
    train_keys = {text_key(e.text) for e in task.train}
    test_keys = {text_key(e.text) for e in task.test}
    assert not train_keys & test_keys
    assert {e.label for e in task.test} == set(task.labels)


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_split_is_the_same_on_every_call_and_callers_cannot_change_it(name: str) -> None:
    # Prepare
    first = load_task(name)
    first.train.clear()
    # Execute
    second = load_task(name)
    third = load_task(name)
    # Assert
    assert second.train and second == third
    assert second.test == third.test


def test_topics_split_is_pinned() -> None:
    # The test split is part of every accuracy we report: changing it must be a deliberate act.
    # Execute
    task = load_task("topics")
    # Assert
    assert (len(task.train), len(task.test)) == (1497, 375)
    assert Counter(e.label for e in task.test)["trivia"] == 102
    rows = "\n".join(sorted(f"{e.label}\t{e.text}" for e in task.test))
    assert hashlib.sha256(rows.encode()).hexdigest() == TOPICS_TEST_SHA256


def test_unknown_task_lists_builtins_and_suggests_a_file() -> None:
    # Execute
    with pytest.raises(DataError) as err:
        load_task("sentiment")
    # Assert
    message = str(err.value)
    assert "'sentiment'" in message and "topics, language" in message and ".jsonl" in message
