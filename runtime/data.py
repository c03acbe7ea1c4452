"""Device-side data: read a user's labelled examples, turn them into the arrays the graphs take.

Text files are JSONL (one ``{"text": ..., "label": ...}`` object a line) or CSV (a header with
``text`` and ``label`` columns); images are ``.npz`` files with ``pixel_values`` and ``labels``.
Plain numpy + tokenizers on purpose: a phone or a Jetson runs this without torch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from fedyolo.runtime.errors import BundleError, DataError

JSONL_SUFFIXES = (".jsonl", ".json-lines", ".ndjson")
CSV_SUFFIXES = (".csv",)
ACCEPTED_FORMATS = (
    'JSONL (.jsonl, one {"text": ..., "label": ...} object a line) or CSV (.csv, columns text,label)'
)
_PREVIEW = 5  # how many unknown labels an error message names


@dataclass(frozen=True)
class Example:
    """One labelled text; the label is always a string, whatever the file held."""

    text: str
    label: str


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Read labelled examples from a JSONL or CSV file, chosen by suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise DataError(
            f"{p}: unknown data format {suffix or '(no suffix)'!r}; write it as {ACCEPTED_FORMATS}"
        )
    if not p.is_file():
        raise DataError(f"{p}: no such data file; check the path, or write one as {ACCEPTED_FORMATS}")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    examples = _read_csv(p, text) if suffix in CSV_SUFFIXES else _read_jsonl(p, text)
    if not examples:
        raise DataError(f"{p}: holds no examples; add at least one line as {ACCEPTED_FORMATS}")
    return examples


def _read_jsonl(path: Path, text: str) -> list[Example]:
    examples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not JSON ({e.msg}); write one object a line, "
                'e.g. {"text": "hello", "label": "greeting"}'
            ) from e
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{lineno}: a JSON {type(row).__name__}, not an object; write one object a line, "
                'e.g. {"text": "hello", "label": "greeting"}'
            )
        examples.append(_example(path, lineno, row))
    return examples


def _read_csv(path: Path, text: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in ("text", "label") if c not in columns]
    if columns and missing:
        raise DataError(
            f"{path}:1: header has no {' or '.join(missing)} column (columns: {', '.join(columns)}); "
            "name the columns text,label in the first line"
        )
    examples = []
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank line
        examples.append(_example(path, reader.line_num, row))
    return examples


def _example(path: Path, lineno: int, row: dict[str, Any]) -> Example:
    missing = [k for k in ("text", "label") if row.get(k) is None]
    if missing:
        raise DataError(
            f"{path}:{lineno}: missing {' and '.join(repr(k) for k in missing)}; "
            "every example needs a text and a label"
        )
    text, label = row["text"], row["label"]
    if not isinstance(text, str):
        raise DataError(f"{path}:{lineno}: text is a {type(text).__name__}, not a string; quote it")
    if not text.strip():
        raise DataError(f"{path}:{lineno}: text is empty; remove the line or give it a text")
    # bool is an int in Python, but `true` as a class name is almost surely a mistake in the file.
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise DataError(
            f"{path}:{lineno}: label is a {type(label).__name__}; a label is a string or an integer"
        )
    label = str(label).strip()
    if not label:
        raise DataError(f"{path}:{lineno}: label is empty; give every example a label")
    return Example(text=text, label=label)


def _label(item: Example | str) -> str:
    return item.label if isinstance(item, Example) else item


def check_labels(
    examples: Sequence[Example] | Sequence[str], labels: Sequence[str], source: str = "the data"
) -> None:
    """Raise a DataError if any example's label is not one of the task's `labels`."""
    known = set(labels)
    unknown = sorted({_label(e) for e in examples} - known)
    if not unknown:
        return
    named = ", ".join(repr(u) for u in unknown[:_PREVIEW])
    more = f" (+{len(unknown) - _PREVIEW} more)" if len(unknown) > _PREVIEW else ""
    raise DataError(
        f"{source} holds labels the task does not know: {named}{more}; the task knows "
        f"{len(labels)}: {', '.join(labels)}. Export the task from this data (--data <file>) "
        "so its labels match, or keep only examples with these labels"
    )


def label_ids(examples: Sequence[Example] | Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Each example's label as its index in `labels` (int64, [n]); unknown labels are a DataError."""
    check_labels(examples, labels)
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[_label(e)] for e in examples], dtype=np.int64)


class TextEncoder:
    """Texts to fixed-length token ids and attention masks, with the bundle's tokenizer.json."""

    def __init__(self, tokenizer_path: str | os.PathLike[str]) -> None:
        path = Path(tokenizer_path)
        if not path.is_file():
            raise BundleError(f"{path}: no tokenizer file; a text bundle holds tokenizer.json, re-export it")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise BundleError(f"{path}: not a tokenizers tokenizer.json ({e}); re-export the bundle") from e
        padding = self.tokenizer.padding or {}
        self.pad_id: int = int(padding.get("pad_id", self._special_id("[PAD]", "<pad>")))
        self.pad_token: str = str(padding.get("pad_token", self.tokenizer.id_to_token(self.pad_id) or ""))
        self._length = 0

    def _special_id(self, *tokens: str) -> int:
        for token in tokens:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return 0

    def encode(self, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 [n, max_length]: truncated, then padded.

        Special tokens ([CLS] ... [SEP] for BERT) come from the tokenizer's post-processor and
        count toward `max_length`.
        """
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
        if max_length != self._length:
            self.tokenizer.enable_truncation(max_length=max_length)
            self.tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=self.pad_token)
            self._length = max_length
        if not texts:
            empty = np.zeros((0, max_length), dtype=np.int64)
            return {"input_ids": empty, "attention_mask": empty.copy()}
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }


def iter_batches(
    arrays: dict[str, np.ndarray],
    batch_size: int,
    shuffle: bool = False,
    seed: int | np.random.Generator | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Slice every array on axis 0 into batches of `batch_size`; the last partial batch is kept.

    seed: of the shuffle, or a generator to draw the order from (it advances the generator's stream).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arrays differ in length on axis 0: {sizes}")
    n = next(iter(sizes.values()), 0)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        yield {name: a[rows] for name, a in arrays.items()}


def read_image_arrays(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """Read ``pixel_values`` (float32 [N, C, H, W]) and ``labels`` (N ints or strings) from a .npz."""
    p = Path(path)
    fix = "save it with np.savez(path, pixel_values=<float32 [N,C,H,W]>, labels=<[N] ints or strings>)"
    if not p.is_file():
        raise DataError(f"{p}: no such image data file; {fix}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = [k for k in ("pixel_values", "labels") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{p}: no {' or '.join(missing)} array (arrays: {', '.join(npz.files)}); {fix}"
                )
            pixels, labels = npz["pixel_values"], npz["labels"]
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        # Object arrays (labels as a Python list of str) need pickle, which we never load.
        raise DataError(f"{p}: not a readable .npz without pickle ({e}); {fix}") from e
    if pixels.ndim != 4 or not np.issubdtype(pixels.dtype, np.floating):
        raise DataError(
            f"{p}: pixel_values is {pixels.dtype} {list(pixels.shape)}, not float [N, C, H, W]; "
            f"normalise the images as the backbone expects and {fix}"
        )
    if labels.ndim != 1 or len(labels) != len(pixels):
        raise DataError(
            f"{p}: {len(pixels)} images but labels has shape {list(labels.shape)}; give one label per image"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.str_)):
        raise DataError(f"{p}: labels are {labels.dtype}; a label is a string or an integer")
    return pixels.astype(np.float32, copy=False), [str(v) for v in labels.tolist()]
