"""Vocabularies: class names, with comma-separated synonyms, from prompts or a file."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UserError
from .readers import read_text

Vocabulary = tuple[tuple[str, ...], ...]


def parse_vocabulary(names: Sequence[str]) -> Vocabulary:
    """Turn class names into a vocabulary: one tuple of synonyms per class.

    A name may hold comma-separated synonyms (``"tv, tvmonitor, television"``) whose text
    embeddings are averaged.

    Raises:
        UserError: on an empty list, an empty name or a class listed twice.
    """
    if isinstance(names, str):
        names = [names]
    vocab = []
    for raw in names:
        synonyms = tuple(s.strip() for s in str(raw).split(",") if s.strip())
        if not synonyms:
            raise UserError(f"empty class name in prompts {list(names)}")
        vocab.append(synonyms)
    if not vocab:
        raise UserError("the prompt list is empty: give at least one class name")
    seen = set()
    for synonyms in vocab:
        if synonyms[0].lower() in seen:
            raise UserError(f"class '{synonyms[0]}' is listed twice in the prompts")
        seen.add(synonyms[0].lower())
    return tuple(vocab)


def read_vocabulary_file(path: str, key: str | None = None) -> Vocabulary:
    """One class per line (synonyms comma-separated); blank lines and ``#`` comments skipped.
    A missing or non-UTF-8 file is a one-line error naming it (and ``key``)."""
    lines = [ln.split("#", 1)[0].strip() for ln in read_text(path, "class-name file", key).splitlines()]
    if not any(lines):
        raise UserError(f"class-name file {path}{f' ({key})' if key else ''} names no class")
    return parse_vocabulary([ln for ln in lines if ln])
