"""A held-out test split that does not leak: deduplicate texts first, then split each label.

Duplicates are common in dialog corpora (the English chatterbot files hold 4,332 utterances but
1,872 distinct texts), and a text in both train and test measures memory, not generalisation.
Two texts are the same when they are equal after collapsing whitespace and case-folding: the
default backbone's tokenizer is uncased, so "Hello" and "hello" are one input to the model.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from fedyolo.runtime.data import Example

log = logging.getLogger(__name__)

OnConflict = Literal["majority", "drop"]


def text_key(text: str) -> str:
    """What makes two texts the same input: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def dedupe(examples: Sequence[Example], on_conflict: OnConflict = "majority") -> list[Example]:
    """One example per distinct text, in order of first appearance.

    A text seen under more than one label is a conflict. ``"majority"`` keeps it under the label it
    was seen with most often, ties going to the label that sorts first (a text repeated 4 times in
    greetings and once in conversations is a greeting). ``"drop"`` removes it: right where a text
    under two labels has no correct answer (a sentence that is the same in Chinese and traditional
    Chinese). Either way the kept example has the text of its first appearance.
    """
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(text_key(example.text), []).append(example)
    kept: list[Example] = []
    conflicts = 0
    for group in groups.values():
        counts = Counter(e.label for e in group)
        if len(counts) == 1:
            kept.append(group[0])
            continue
        conflicts += 1
        if on_conflict == "majority":
            label = min(counts, key=lambda lbl: (-counts[lbl], lbl))
            kept.append(Example(text=group[0].text, label=label))
    log.debug(
        "dedupe: %d examples -> %d distinct texts, %d under several labels (%s)",
        len(examples),
        len(groups),
        conflicts,
        "kept under the majority label" if on_conflict == "majority" else "dropped",
    )
    return kept


def held_out_split(
    examples: Sequence[Example], test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into (train, test), stratified by label; the same seed gives the same split forever.

    Per label, round(`test_fraction` × count) examples go to test, at least one and never all, so
    a label with two or more examples is in both splits; a label with a single example stays in
    train. Which examples go is decided by a hash of (seed, text) rather than a random generator,
    so the split depends neither on numpy's version nor on the order of `examples`. Deduplicate
    first (`dedupe`): the split is by example, and duplicates would land on both sides.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    by_label: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(i)
    test_rows: set[int] = set()
    for label in sorted(by_label):
        rows = sorted(by_label[label], key=lambda i: (_rank(seed, examples[i].text), i))
        n = len(rows)
        n_test = 0 if n < 2 else min(n - 1, max(1, int(n * test_fraction + 0.5)))
        if n < 2:
            log.info("label %r has one example: it is trained on but never tested", label)
        test_rows.update(rows[:n_test])
    train = [e for i, e in enumerate(examples) if i not in test_rows]
    test = [e for i, e in enumerate(examples) if i in test_rows]
    return train, test


def _rank(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{text_key(text)}".encode()).digest()
