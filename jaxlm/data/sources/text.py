"""Readers of text files: documents (the text source) and JSON lines (the jsonl source)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from jaxlm.config import DataConfig
from jaxlm.data.documents import read_documents, read_text, resolve_files
from jaxlm.data.sources.records import (
    CONVERSATION_TASKS,
    PAIR_TASKS,
    Record,
    _Labels,
    _where,
)
from jaxlm.errors import DataError

# Text files


def _text_records(data: DataConfig, labels: _Labels, skipped: Counter) -> Iterator[Record]:
    files = resolve_files(data.train_files)
    for number, document in enumerate(read_documents(files, data.document_unit, skipped)):
        yield document, (f"document {number}",)


def _lines(files: Sequence[Path], skipped: Counter) -> Iterator[tuple[str, tuple]]:
    """(line, (file, line number)) of the non-blank lines of files; empty files are counted."""
    for path in files:
        text = read_text(path)
        if not text.strip():
            skipped["empty files"] += 1
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                yield line.rstrip("\r"), (path, number)


# JSON lines


def _jsonl_records(data: DataConfig, labels: _Labels, skipped: Counter) -> Iterator[Record]:
    for line, where in _lines(resolve_files(data.train_files), skipped):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{_where(where)}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{_where(where)}: a line must hold a JSON object, not {line[:40]!r}")
        if data.task in CONVERSATION_TASKS:
            yield _conversation(record, data.messages_field, where), where
            continue
        texts = [_text_field(record, data.text_field, where)]
        if data.task in PAIR_TASKS:
            texts.append(_text_field(record, data.target_field, where))
        if not all(text.strip() for text in texts):
            skipped["empty texts"] += 1
        elif data.task == "classification":
            yield (texts[0], _field(record, data.label_field, where)), where
        else:
            yield (texts[0] if len(texts) == 1 else tuple(texts)), where


def _field(record: dict, name: str, where: tuple):
    if name not in record:
        raise DataError(
            f"{_where(where)}: no field {name!r} (fields: {', '.join(map(str, record))})"
        )
    return record[name]


def _text_field(record: dict, name: str, where: tuple) -> str:
    value = _field(record, name, where)
    if not isinstance(value, str):
        raise DataError(f"{_where(where)}: field {name!r} holds {value!r}, not a string")
    return value


def _conversation(record: dict, name: str, where: tuple) -> list[dict[str, str]]:
    """The messages of a conversation field: a list of {"role": ..., "content": ...} strings."""
    messages = _field(record, name, where)
    valid = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not valid or not messages:
        raise DataError(
            f"{_where(where)}: field {name!r} must hold a list of messages, each with a string "
            f"'role' and 'content', not {json.dumps(messages)[:60]}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]
