"""A task's data: its labels and a fixed train/test split, built in or read from a user's file.

Built-in tasks, both from the chatterbot corpus (see `corpus`):

- ``topics``: an English utterance -> the category file it is in (21 labels). A text in several
  categories is kept once, under the category it appears in most often (ties: the name that
  sorts first); 8 texts are such.
- ``language``: an utterance -> the language folder it is in (28 labels). Texts are deduplicated
  within each language; a text found in two languages is dropped (242 texts: Chinese and
  traditional Chinese share 102 sentences, and the Swedish files repeat 88 English ones), since it
  has no right answer and would otherwise sit in train and test under different labels.

The test split holds 20% of each label, chosen by a fixed seed, so it never changes; federated
clients share it and partition only the train split (`partition.dirichlet_partition`).
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedyolo.runtime.data import CSV_SUFFIXES, JSONL_SUFFIXES, Example, read_examples, read_image_arrays
from fedyolo.runtime.errors import DataError
from fedyolo.tasks import corpus
from fedyolo.tasks.split import dedupe, held_out_split

IMAGE_SUFFIXES = (".npz",)
DATA_FORMATS = (
    'JSONL (.jsonl, one {"text": ..., "label": ...} object a line) or CSV (.csv, columns text,label) for '
    "text; .npz (pixel_values [N, C, H, W] and labels) for images"
)
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the built-in test splits are part of the benchmark: never change this


@dataclass(frozen=True)
class TaskData:
    """A task's label names (sorted; a label's id is its index) and its train and test examples."""

    name: str
    labels: tuple[str, ...]
    train: list[Example]
    test: list[Example]


def _topics() -> tuple[tuple[str, ...], list[Example]]:
    rows = corpus.labelled_utterances("english")
    examples = dedupe([Example(text, category) for text, _, category in rows], on_conflict="majority")
    return corpus.categories("english"), examples


def _language() -> tuple[tuple[str, ...], list[Example]]:
    # A text repeated within one language is no conflict and is kept once; across languages it is.
    rows = corpus.labelled_utterances()
    examples = dedupe([Example(text, lang) for text, lang, _ in rows], on_conflict="drop")
    return corpus.languages(), examples


_BUILDERS: dict[str, Callable[[], tuple[tuple[str, ...], list[Example]]]] = {
    "topics": _topics,
    "language": _language,
}
BUILTIN_TASKS: tuple[str, ...] = tuple(_BUILDERS)


def unknown_task_error(name: str) -> DataError:
    """The error for a task name that is neither built in nor a data file."""
    formats = ", ".join(JSONL_SUFFIXES + CSV_SUFFIXES)
    return DataError(
        f"no built-in task {name!r} (built-in: {', '.join(BUILTIN_TASKS)}); "
        f"or give the path of your own labelled data ({formats}) instead"
    )


def load_task(name: str) -> TaskData:
    """A built-in task (`BUILTIN_TASKS`) with its fixed split; each call returns fresh lists."""
    labels, train, test = _builtin(name)
    return TaskData(name=name, labels=labels, train=list(train), test=list(test))


@functools.lru_cache(maxsize=len(_BUILDERS))
def _builtin(name: str) -> tuple[tuple[str, ...], tuple[Example, ...], tuple[Example, ...]]:
    if name not in _BUILDERS:
        raise unknown_task_error(name)
    labels, examples = _BUILDERS[name]()
    train, test = held_out_split(examples, TEST_FRACTION, SPLIT_SEED)
    return labels, tuple(train), tuple(test)


def task_from_file(
    path: str | os.PathLike[str],
    name: str | None = None,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> TaskData:
    """A task from a user's JSONL or CSV file: deduplicated, labels sorted, split by label.

    Duplicate texts are kept once, under their most frequent label, as for ``topics``.
    """
    examples = dedupe(read_examples(path), on_conflict="majority")
    labels = tuple(sorted({e.label for e in examples}))
    if len(labels) < 2:
        raise DataError(f"{path}: every example has the label {labels[0]!r}; a task needs two labels or more")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction {test_fraction} is not between 0 and 1; use e.g. 0.2")
    train, test = held_out_split(examples, test_fraction, seed)
    return TaskData(name=name or Path(path).stem, labels=labels, train=train, test=test)


def labels_from_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The labels of a task's data file, in the order the task numbers them: JSONL/CSV of texts (as
    `task_from_file` reads them) or a .npz of images (sorted; integer labels by value)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        _, found = read_image_arrays(p)
        labels = sorted(set(found), key=lambda x: (0, int(x), "") if x.lstrip("-").isdigit() else (1, 0, x))
        if len(labels) < 2:
            raise DataError(f"{p}: every image has the label {labels[0]!r}; a task needs two labels or more")
        return tuple(labels)
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise DataError(f"{p}: unknown data format {suffix or '(no suffix)'!r}; give {DATA_FORMATS}")
    return task_from_file(p).labels


def write_examples(examples: Sequence[Example], path: str | os.PathLike[str]) -> Path:
    """Write examples as JSONL or CSV, chosen by suffix; `read_examples` reads them back unchanged."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise DataError(
            f"{p}: cannot write data as {suffix or '(no suffix)'!r}; "
            f"name the file with one of {', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="") as f:
        if suffix in CSV_SUFFIXES:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows([e.text, e.label] for e in examples)
        else:
            for e in examples:
                f.write(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n")
    return p
