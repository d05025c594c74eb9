"""Data sources: the examples of a task, read from files or TFDS and split into train and eval.

    splits = load_splits(cfg.data)   # Splits(train, eval, labels, skipped)

Examples by `data.task`: causal_lm and masked_lm take documents (`str`); classification takes
`(text, label index)` with `Splits.labels` the class names; seq2seq takes `(source, target)`.

Sources (`data.source`), all reading `data.train_files` (paths or globs) except tfds:

- text: UTF-8 text files, one document per file, paragraph or line (`data.document_unit`).
- jsonl: one JSON object per line, with the fields `data.text_field`, `data.label_field` (a class
  name or index) and `data.target_field`. Whitespace-only lines are ignored.
- tfds: a prepared TensorFlow Datasets dataset, never downloaded; `build_tfds_dataset` prepares
  one from local examples. Class names come from a ClassLabel feature.
- vader: the VADER sentiment ground truth (Hutto & Gilbert, ICWSM 2014), lines of
  `id<TAB>mean valence<TAB>sentence`, labelled negative or positive by the sign of the valence.
- gettext: English -> German message pairs of compiled gettext catalogs (`.mo`). A plural entry
  gives its singular pair (msgid -> msgstr[0]); message contexts are dropped.
- tokens: a pre-tokenized token file, read by `jaxlm.data.token_file`, not here.

Bad data is either a one-line `DataError` naming the file and line (or byte offset), or a skip
counted in `Splits.skipped`: files without text, empty texts, zero-valence VADER sentences,
gettext catalogs whose bytes do not match their declared charset, empty, untranslated and
duplicate gettext pairs.
"""

from __future__ import annotations

import gettext
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxlm.config import DataConfig
from jaxlm.data.documents import read_documents, read_text, resolve_files, split_documents
from jaxlm.errors import ConfigError, DataError

LM_TASKS = ("causal_lm", "masked_lm")
TASKS_OF_SOURCE = {
    "text": LM_TASKS,
    "jsonl": (*LM_TASKS, "classification", "seq2seq"),
    "tfds": (*LM_TASKS, "classification", "seq2seq"),
    "vader": ("classification",),
    "gettext": ("seq2seq",),
}
VADER_LABELS = ("negative", "positive")


@dataclass
class Splits:
    """Train and eval examples, class names (classification) and counts of skipped data."""

    train: list
    eval: list
    labels: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def texts(self) -> Iterator[str]:
        """Every text of the training examples (to train a tokenizer on)."""
        for example in self.train:
            if isinstance(example, str):
                yield example
            elif isinstance(example[1], str):  # seq2seq: (source, target)
                yield from example
            else:  # classification: (text, label)
                yield example[0]

    def summary(self) -> str:
        """One line: example counts, class names and skip counts."""
        line = f"{len(self.train)} train / {len(self.eval)} eval examples"
        if self.labels:
            line += f", {len(self.labels)} classes ({', '.join(self.labels)})"
        if self.skipped:
            line += f"; skipped: {_counts(self.skipped)}"
        return line


def load_splits(data: DataConfig) -> Splits:
    """The examples of `data.source` for `data.task`: the first `data.max_examples` (0 = all; of
    the examples shuffled with `data.shuffle_seed` when set), with the last `data.eval_examples`
    or else every k-th held out for evaluation (k = 1 / data.eval_fraction), or, for tfds with
    `data.tfds_eval_split`, that split as the eval set."""
    tasks = TASKS_OF_SOURCE.get(data.source)
    if tasks is None:
        raise DataError(
            f"data.source={data.source!r} is read with jaxlm.data.token_file.TokenFile"
            if data.source == "tokens"
            else f"unknown data.source {data.source!r}"
        )
    if data.task not in tasks:
        raise ConfigError(
            f"config key 'data.task': the {data.source} source provides examples for "
            f"{', '.join(tasks)}, not {data.task}"
        )
    labels = _Labels(data.labels)
    skipped = Counter()
    if data.source == "tfds" and data.tfds_eval_split:
        train = _read(data, _tfds_records(data, data.tfds_split, labels), labels, skipped)
        held_out = _read(data, _tfds_records(data, data.tfds_eval_split, labels), labels, skipped)
    else:
        records = _RECORDS[data.source](data, labels, skipped)
        examples = _read(data, records, labels, skipped)
        noun = "documents" if data.source == "text" else "examples"
        if data.eval_examples:
            train, held_out = _hold_out_last(examples, data.eval_examples, noun)
        else:
            train, held_out = split_documents(examples, data.eval_fraction, noun)
    if data.task == "classification":
        train, held_out = labels.indexed(train), labels.indexed(held_out)
    return Splits(train, held_out, labels.names(), dict(sorted(skipped.items())))


def _hold_out_last(examples: list, count: int, noun: str) -> tuple[list, list]:
    """(all but the last `count` examples, the last `count`)."""
    if count >= len(examples):
        raise DataError(
            f"data.eval_examples={count} leaves none of the {len(examples)} {noun} to train on"
        )
    return examples[:-count], examples[-count:]


# A record is (example, where): the example with a raw label (a class name or an index) for
# classification, and where it was found, e.g. ("file.jsonl", 3), for error messages.
Record = tuple[object, tuple]


def _read(data: DataConfig, records: Iterator[Record], labels: _Labels, skipped: Counter) -> list:
    """The first `data.max_examples` examples of `records` (after shuffling them all with
    `data.shuffle_seed` when set), raw labels checked."""
    shuffled = data.shuffle_seed is not None
    examples = []
    limit = None if shuffled else data.max_examples or None
    for example, where in itertools.islice(records, limit):
        if data.task == "classification":
            labels.check(example[1], where)
        examples.append(example)
    if shuffled:
        random.Random(data.shuffle_seed).shuffle(examples)
        examples = examples[: data.max_examples or None]
    if not examples:
        detail = f" (skipped: {_counts(skipped)})" if skipped else ""
        raise DataError(f"the {data.source} source holds no examples{detail}")
    return examples


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))


def _where(where: tuple) -> str:
    return ":".join(map(str, where))


class _Labels:
    """Raw class labels (names or indices) -> class indices, checked against `data.labels`.

    Without `data.labels` the classes are the source's own names (a ClassLabel feature, VADER's
    negative/positive), else the sorted names found, else `0 .. max index found`.
    """

    def __init__(self, names: Sequence[str]):
        self.given = list(names)
        self.source_names: list[str] = []
        self.found: set = set()

    def check(self, label, where: tuple) -> None:
        """A label outside the classes raises `DataError` naming it and where it was found."""
        names = self.given or self.source_names
        if isinstance(label, str):
            if names and label not in names:
                raise DataError(
                    f"{_where(where)}: label {label!r} is not one of the classes "
                    f"({', '.join(names)}); set data.labels to the class names"
                )
        elif isinstance(label, int) and not isinstance(label, bool):
            if label < 0 or (names and label >= len(names)):
                classes = f"{len(names)} classes" if names else "indices must be >= 0"
                raise DataError(f"{_where(where)}: label index {label} is out of range ({classes})")
        else:
            raise DataError(
                f"{_where(where)}: label {label!r} is neither a class name nor a class index"
            )
        self.found.add(label)
        kinds = {type(found) for found in self.found}
        if len(kinds) > 1 and not names:
            raise DataError(
                f"{_where(where)}: labels mix class names and indices: set data.labels to "
                "the class names in index order"
            )

    def names(self) -> list[str]:
        if self.given or self.source_names:
            return self.given or self.source_names
        if all(isinstance(label, str) for label in self.found):
            return sorted(self.found)
        return [str(i) for i in range(max(self.found) + 1)] if self.found else []

    def indexed(self, examples: list) -> list[tuple[str, int]]:
        index = {name: i for i, name in enumerate(self.names())}
        return [
            (text, index[label] if isinstance(label, str) else label) for text, label in examples
        ]


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
        texts = [_text_field(record, data.text_field, where)]
        if data.task == "seq2seq":
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


# VADER sentiment ground truth


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


# TensorFlow Datasets


def _tfds_records(data: DataConfig, split: str, labels: _Labels) -> Iterator[Record]:
    import tensorflow_datasets as tfds

    name, data_dir = data.tfds_name, data.tfds_data_dir or None
    if not name:
        raise DataError("data.tfds_name is empty: name a prepared TFDS dataset")
    try:
        dataset, info = tfds.load(
            name, split=split, data_dir=data_dir, download=False, with_info=True
        )
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, FileNotFoundError):
        where = f"data_dir {data_dir}" if data_dir else "the default TFDS data_dir"
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in {where}, and jaxlm never downloads: "
            f"prepare it (`tfds build {name} --data_dir DIR`, or jaxlm.data.sources."
            "build_tfds_dataset from local files) and set data.tfds_data_dir"
        ) from None
    except ValueError as e:  # an unknown split
        raise DataError(f"TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    fields = [data.text_field]
    if data.task == "classification":
        fields.append(data.label_field)
    elif data.task == "seq2seq":
        fields.append(data.target_field)
    for key in fields:
        if key not in info.features:
            raise DataError(
                f"TFDS dataset {name!r} has no feature {key!r} "
                f"(features: {', '.join(sorted(info.features))})"
            )
    label_feature = info.features[data.label_field] if data.task == "classification" else None
    class_names = list(getattr(label_feature, "names", None) or [])
    if class_names and not labels.given:
        labels.source_names = class_names
    if data.max_examples and data.shuffle_seed is None:
        dataset = dataset.take(data.max_examples)
    for number, example in enumerate(tfds.as_numpy(dataset)):
        where = (f"TFDS {name} {split}", f"example {number}")
        values = [_tfds_value(example[key], key, where) for key in fields]
        if data.task == "classification" and class_names:
            values[1] = class_names[values[1]]
        yield (values[0] if len(values) == 1 else tuple(values)), where


def _tfds_value(value, key: str, where: tuple):
    """A TFDS feature value as str (text) or int (a class index)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{_where(where)}: feature {key!r} is not UTF-8 text (bad byte at offset {e.start})"
            ) from None
    if getattr(value, "ndim", None) == 0 and value.dtype.kind in "iu":
        return int(value)
    raise DataError(f"{_where(where)}: feature {key!r} is neither text nor a class index")


def build_tfds_dataset(
    name: str,
    data_dir: str | Path,
    splits: Mapping[str, Sequence[Mapping[str, object]]],
    labels: Sequence[str] = (),
    label_field: str = "label",
    version: str = "1.0.0",
) -> Path:
    """Prepares a TFDS dataset from local examples (dicts of str and int values) in `data_dir`,
    where the tfds source loads it (`data.tfds_name=name`, `data.tfds_data_dir=data_dir`).

    Strings become Text features; `label_field` becomes a ClassLabel of `labels` when given.
    Example order is kept. Returns the dataset's folder.
    """
    import numpy as np
    import tensorflow_datasets as tfds

    first = next((examples[0] for examples in splits.values() if examples), None)
    if first is None:
        raise DataError(f"no examples to build the TFDS dataset {name!r} from")
    features = {}
    for key, value in first.items():
        if key == label_field and labels:
            features[key] = tfds.features.ClassLabel(names=list(labels))
        elif isinstance(value, str):
            features[key] = tfds.features.Text()
        else:
            features[key] = tfds.features.Scalar(dtype=np.int64)
    try:
        builder = tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=tfds.features.FeaturesDict(features),
            split_datasets={
                split: [(str(i), dict(example)) for i, example in enumerate(examples)]
                for split, examples in splits.items()
            },
            data_dir=str(data_dir),
            disable_shuffling=True,
        )
    except RuntimeError as e:
        raise DataError(f"cannot build TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    return Path(builder.data_dir)


_RECORDS: dict[str, Callable[[DataConfig, _Labels, Counter], Iterator[Record]]] = {
    "text": _text_records,
    "jsonl": _jsonl_records,
    "vader": _vader_records,
    "gettext": _gettext_records,
    "tfds": lambda data, labels, skipped: _tfds_records(data, data.tfds_split, labels),
}
