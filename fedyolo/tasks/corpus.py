"""The chatterbot-corpus dialog YAML (PyPI `chatterbot-corpus`): utterances by language and category.

Layout: ``chatterbot_corpus/data/<language>/<category>.yml``, each file a mapping with
``categories`` and ``conversations`` (a list of conversations, each a list of utterances).

The files have quirks, and we read them so that none of them changes a text:

- Scalars are read as strings exactly as written (YAML's ``BaseLoader``): ``22`` stays ``"22"``,
  ``yes`` stays ``"yes"`` instead of becoming ``True``.
- A few conversations are one string instead of a list (a mis-indented ``- a - b``): kept as one
  utterance, since splitting on ``" - "`` would also split answers that contain a dash.
- Nested lists and mappings are flattened in order; empty and whitespace-only entries are skipped;
  every utterance has its runs of whitespace collapsed to one space.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedyolo.runtime.errors import DataError

CORPUS_PACKAGE = "chatterbot_corpus"
_INSTALL_HINT = "it comes with the 'data' extra: pip install 'fedyolo[data]'"

# The C loader is ~10× faster; the pure-Python one reads the same strings.
_Loader: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def corpus_dir() -> Path:
    """The folder holding one subfolder of YAML files per language."""
    try:
        root = Path(str(resources.files(CORPUS_PACKAGE))) / "data"
    except ModuleNotFoundError as e:
        raise DataError(
            f"the built-in tasks read the chatterbot corpus, which is not installed; {_INSTALL_HINT}"
        ) from e
    if not root.is_dir():
        raise DataError(f"the chatterbot corpus has no data folder at {root}; reinstall it: {_INSTALL_HINT}")
    return root


def languages() -> tuple[str, ...]:
    """Every language folder of the corpus, sorted."""
    return tuple(sorted(p.name for p in corpus_dir().iterdir() if p.is_dir() and any(p.glob("*.yml"))))


def categories(language: str) -> tuple[str, ...]:
    """The category file names (without .yml) of one language, sorted."""
    folder = corpus_dir() / language
    if not folder.is_dir():
        raise DataError(
            f"the chatterbot corpus has no language {language!r}; languages: {', '.join(languages())}"
        )
    return tuple(sorted(p.stem for p in folder.glob("*.yml")))


@functools.lru_cache(maxsize=64)
def utterances(language: str, category: str) -> tuple[str, ...]:
    """Every utterance of one category file, in file order, duplicates kept."""
    path = corpus_dir() / language / f"{category}.yml"
    try:
        with path.open(encoding="utf-8") as f:
            # BaseLoader builds only str, list and dict: nothing to execute, nothing coerced.
            raw = yaml.load(f, Loader=_Loader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable corpus file ({e}); reinstall the corpus: {_INSTALL_HINT}") from e
    conversations = raw.get("conversations") if isinstance(raw, dict) else None
    return tuple(_texts(conversations))


def _texts(node: object) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _texts(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _texts(item)
    elif node is not None:
        text = " ".join(str(node).split())
        if text:
            yield text


def labelled_utterances(language: str | None = None) -> list[tuple[str, str, str]]:
    """``(text, language, category)`` for every utterance of `language`, or of every language.

    Ordered by language, then category, then position in the file, so that every rule that keeps
    "the first" of something is deterministic.
    """
    langs = languages() if language is None else (language,)
    return [
        (text, lang, category)
        for lang in langs
        for category in categories(lang)
        for text in utterances(lang, category)
    ]
