"""Readers of two corpora: VADER sentiment ground truth and gettext message catalogs."""

from __future__ import annotations

import gettext
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from jaxlm.config import DataConfig
from jaxlm.data.documents import resolve_files
from jaxlm.data.sources.records import Record, _Labels, _where
from jaxlm.data.sources.text import _lines
from jaxlm.errors import DataError

# VADER sentiment ground truth

VADER_LABELS = ("negative", "positive")


def _vader_records(data: DataConfig, labels: _Labels, skipped: Counter) -> Iterator[Record]:
    labels.source_names = list(VADER_LABELS)
    try:
        files = resolve_files(data.train_files)
    except DataError as e:
        raise DataError(
            f"{e}: run `make data-vader` to fetch the VADER ground truth into data/vader/"
        ) from None
    for line, where in _lines(files, skipped):
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{_where(where)}: expected 'id<TAB>mean valence<TAB>sentence'")
        try:
            valence = float(parts[1])
        except ValueError:
            raise DataError(f"{_where(where)}: valence {parts[1]!r} is not a number") from None
        sentence = parts[2].strip()
        if valence == 0:
            skipped["zero-valence sentences"] += 1
        elif not sentence:
            skipped["empty texts"] += 1
        else:
            yield (sentence, VADER_LABELS[valence > 0]), where


# gettext catalogs


def _gettext_records(data: DataConfig, labels: _Labels, skipped: Counter) -> Iterator[Record]:
    try:
        files = resolve_files(data.train_files)
    except DataError as e:
        raise DataError(
            f"{e}: install German message catalogs (e.g. Debian's iso-codes package ships "
            "de/LC_MESSAGES/iso_*.mo) or point data.train_files at .mo files"
        ) from None
    seen = set()
    for path in files:
        for msgid, msgstr in _catalog(path, skipped):
            pair = msgid, msgstr
            if not msgstr.strip() or not msgid.strip():
                skipped["untranslated messages"] += 1
            elif msgid == msgstr:
                skipped["identical pairs"] += 1
            elif pair in seen:
                skipped["duplicate pairs"] += 1
            else:
                seen.add(pair)
                yield pair, (path,)


def _catalog(path: Path, skipped: Counter) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) of a .mo catalog in file order, without the header; plural entries give
    their singular form, contexts are dropped."""
    try:
        with open(path, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
    except UnicodeDecodeError:
        skipped["undecodable catalogs"] += 1
        return
    except OSError as e:
        raise DataError(f"{path} is not a gettext .mo catalog: {e.strerror or e}") from None
    for key, msgstr in catalog.items():
        if isinstance(key, tuple):  # plural: (msgid, form index)
            key, form = key
            if form != 0:
                continue
        msgid = key.split("\x04", 1)[-1]  # context\x04msgid
        if key:  # the header is the translation of ""
            yield msgid, msgstr
