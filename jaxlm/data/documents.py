"""Text files: file patterns to files, files to documents, documents (or any examples) to
train/eval splits."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from jaxlm.errors import DataError

UNITS = ("file", "paragraph", "line")
BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # one or more lines holding only whitespace
T = TypeVar("T")


def resolve_files(patterns: Sequence[str]) -> list[Path]:
    """The files matched by paths or globs (`**` recursive, `~` expanded), sorted, no repeats."""
    if not patterns:
        raise DataError("data.train_files is empty: give paths or globs of UTF-8 text files")
    files = set()
    for pattern in patterns:
        matches = glob.glob(os.path.expanduser(pattern), recursive=True)
        matches = [Path(m) for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataError(f"no files match data.train_files entry {pattern!r}")
        files.update(matches)
    return sorted(files)


def read_text(path: Path) -> str:
    """The UTF-8 text of a file; undecodable bytes raise `DataError` naming their offset."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def read_documents(
    files: Sequence[Path], unit: str, skipped: dict[str, int] | None = None
) -> list[str]:
    """Documents of `files` in order: whole files, paragraphs (split at blank lines) or lines.

    Trailing whitespace is stripped and empty documents are skipped; files without text are
    counted in `skipped["empty files"]`.
    """
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {', '.join(UNITS)}")
    documents = []
    for path in files:
        text = read_text(path)
        if unit == "file":
            parts = [text]
        elif unit == "paragraph":
            parts = BLANK_LINES.split(text)
        else:
            parts = text.split("\n")
        found = [doc for doc in map(str.rstrip, parts) if doc]
        if not found and skipped is not None:
            skipped["empty files"] = skipped.get("empty files", 0) + 1
        documents.extend(found)
    if not documents:
        raise DataError(f"the {len(files)} data file(s) contain no text")
    return documents


def split_documents(
    documents: Sequence[T], eval_fraction: float, noun: str = "documents"
) -> tuple[list[T], list[T]]:
    """(train, eval): with k = round(1 / eval_fraction), every k-th document is held out.

    Works on examples of any kind; `noun` names them in errors.
    """
    if eval_fraction == 0:
        return list(documents), []
    k = round(1 / eval_fraction)
    train = [doc for i, doc in enumerate(documents) if i % k != k - 1]
    held_out = [doc for i, doc in enumerate(documents) if i % k == k - 1]
    if not held_out:
        smaller_unit = ", or use a smaller data.document_unit" if noun == "documents" else ""
        raise DataError(
            f"data.eval_fraction={eval_fraction} holds out none of the {len(documents)} "
            f"{noun}: raise it or set it to 0{smaller_unit}"
        )
    if not train:
        raise DataError(f"data.eval_fraction={eval_fraction} leaves no training {noun}: lower it")
    return train, held_out
