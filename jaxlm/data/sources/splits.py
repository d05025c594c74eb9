"""load_splits: the examples of `data.source` for `data.task`, split into train and eval."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from jaxlm.config import DataConfig
from jaxlm.data.documents import split_documents
from jaxlm.data.sources.corpora import _gettext_records, _vader_records
from jaxlm.data.sources.records import CONVERSATION_TASKS, PAIR_TASKS, Record, _Labels
from jaxlm.data.sources.text import _jsonl_records, _text_records
from jaxlm.data.sources.tfds import _tfds_records
from jaxlm.errors import ConfigError, DataError

LM_TASKS = ("causal_lm", "masked_lm", "span_corruption")  # tasks that read documents
TASKS_OF_SOURCE = {
    "text": LM_TASKS,
    "jsonl": (*LM_TASKS, "classification", *PAIR_TASKS, *CONVERSATION_TASKS),
    "tfds": (*LM_TASKS, "classification", *PAIR_TASKS),
    "vader": ("classification",),
    "gettext": ("seq2seq",),
}


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
            elif isinstance(example, list):  # a conversation
                yield from (message["content"] for message in example)
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


_RECORDS: dict[str, Callable[[DataConfig, _Labels, Counter], Iterator[Record]]] = {
    "text": _text_records,
    "jsonl": _jsonl_records,
    "vader": _vader_records,
    "gettext": _gettext_records,
    "tfds": lambda data, labels, skipped: _tfds_records(data, data.tfds_split, labels),
}
