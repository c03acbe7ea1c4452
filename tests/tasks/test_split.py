"""Deduplication and the held-out split, on small hand-made data."""

from __future__ import annotations

import random

import pytest

from fedyolo.runtime.data import Example
from fedyolo.tasks import dedupe, held_out_split, text_key


def test_text_key_ignores_case_and_whitespace() -> None:
    # Assert
    assert text_key("  Hello\t World ") == text_key("hello world")
    assert text_key("hello world") != text_key("hello, world")


def test_dedupe_keeps_first_text_and_majority_label_ties_to_the_first_sorted() -> None:
    # Prepare
    examples = [
        Example("Hello", "conversations"),
        Example("hello", "greetings"),
        Example("HELLO ", "greetings"),
        Example("Yes.", "emotion"),
        Example("yes.", "ai"),
        Example("Bye", "greetings"),
        Example("Bye", "greetings"),
    ]
    # Execute
    kept = dedupe(examples)
    dropped = dedupe(examples, on_conflict="drop")
    # Assert
    assert kept == [Example("Hello", "greetings"), Example("Yes.", "ai"), Example("Bye", "greetings")]
    assert dropped == [Example("Bye", "greetings")]


def make_examples(sizes: dict[str, int]) -> list[Example]:
    return [Example(f"{label} text {i}", label) for label, n in sizes.items() for i in range(n)]


def test_held_out_split_is_stratified_and_keeps_single_examples_in_train() -> None:
    # Prepare
    examples = make_examples({"a": 50, "b": 10, "c": 2, "d": 1})
    # Execute
    train, test = held_out_split(examples, test_fraction=0.2, seed=0)
    # Assert
    test_counts = {label: sum(e.label == label for e in test) for label in "abcd"}
    assert test_counts == {"a": 10, "b": 2, "c": 1, "d": 0}
    assert sorted(train + test, key=examples.index) == examples
    assert train == [e for e in examples if e not in test]  # input order kept


def test_held_out_split_depends_on_seed_not_on_input_order() -> None:
    # Prepare
    examples = make_examples({"a": 40, "b": 30})
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    # Execute
    _, test = held_out_split(examples, 0.25, seed=3)
    _, test_shuffled = held_out_split(shuffled, 0.25, seed=3)
    _, test_other_seed = held_out_split(examples, 0.25, seed=4)
    # Assert
    assert set(test) == set(test_shuffled)
    assert set(test) != set(test_other_seed)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_held_out_split_rejects_fractions_outside_zero_one(fraction: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="between 0 and 1"):
        held_out_split(make_examples({"a": 4}), fraction, seed=0)
