"""From a config to this process's training and evaluation batches, for every task.

    data = training_data(cfg, workdir)
    batches = data.train_batches(start)   # resumes at global batch `start`
    for batch in data.eval_batches(limit): ...

The tokenizer is the configured one, the workdir's, or one trained on the training split. Batch k
of training is a function of the seed and k alone, so a restored run continues with exactly the
next batch; each process builds only its share of every global batch.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jax

from jaxlm.config import Config
from jaxlm.data.batching import IndexedBatches, prefetch
from jaxlm.data.hf_tokenizer import (
    adopt_tokenizer,
    configured_or_existing,
    load_tokenizer,
    run_tokenizer,
    workdir_tokenizer,
)
from jaxlm.data.masked_lm import masked_lm_rows
from jaxlm.data.span_corruption import TRAINED_SENTINELS, fit_chunk
from jaxlm.data.tasks import (
    TaskRows,
    chat_rows,
    classification_rows,
    completion_rows,
    seq2seq_rows,
    span_corruption_rows,
    span_corruption_stream_rows,
    span_settings,
    target_length,
)
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer_on_texts
from jaxlm.distributed import on_process_zero
from jaxlm.errors import ConfigError, DataError
from jaxlm.finetune.pretrained import pretrained_tokenizer

Batch = dict
TOKEN_FILE_TASKS = ("causal_lm", "span_corruption")


@dataclass
class TrainingData:
    """This process's batches: `train_batches(start)` forever, `eval_batches(limit)` once."""

    tokenizer: Tokenizer | None
    train_batches: Callable[[int], Iterator[Batch]]
    eval_batches: Callable[[int], Iterable[Batch]]  # at most `limit` batches (0 = all)
    labels: list[str] = field(default_factory=list)
    summary: str = ""
    eval_examples: list = field(default_factory=list)  # the held-out examples, as loaded


def prepare_tokenizer(cfg: Config, texts: Iterable[str], workdir: Path, log) -> Tokenizer:
    """The configured tokenizer (sentencepiece or Hugging Face), else the workdir's. A workdir
    without one first gets the tokenizer of the `finetune.init_from` weights, or one trained on
    `texts` (with sentinel tokens for span corruption); process 0 alone makes it in a
    multi-process run, so the workdir must be shared."""

    def make_tokenizer() -> None:
        if cfg.data.tokenizer or workdir_tokenizer(workdir).exists():
            return
        if cfg.finetune.init_from:
            inherited = _inherited_tokenizer(cfg.finetune.init_from)
            log(f"tokenizer: {inherited}, as finetune.init_from was trained with")
            adopt_tokenizer(inherited, workdir)
            return
        log(f"training a {cfg.data.tokenizer_type} tokenizer of {cfg.model.vocab_size} tokens")
        train_tokenizer_on_texts(
            texts,
            workdir_tokenizer(workdir),
            cfg.model.vocab_size,
            cfg.data.tokenizer_type,
            cfg.data.tokenizer_sample_lines,
            sentinels=_sentinels_to_train(cfg.data),
        )

    on_process_zero(make_tokenizer, "jaxlm tokenizer")  # the others wait for it
    tokenizer = load_tokenizer(str(run_tokenizer(cfg.data.tokenizer, workdir)))
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"config key 'model.vocab_size': {cfg.model.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size} tokens"
        )
    return tokenizer


def _sentinels_to_train(data) -> int:
    """Span corruption's sentinels in a tokenizer trained for a run: T5's 100, or as many as a
    row has noise spans if that is more."""
    if data.task != "span_corruption":
        return 0
    return max(TRAINED_SENTINELS, fit_chunk(**span_settings(data)).spans)


def _inherited_tokenizer(init_from: str) -> Path:
    """The tokenizer of the `init_from` weights; weights without one raise `ConfigError`, since
    a tokenizer trained anew would not match their embeddings."""
    tokenizer = pretrained_tokenizer(init_from)
    if tokenizer is None:
        raise ConfigError(
            f"config key 'data.tokenizer': {init_from} (finetune.init_from) holds no "
            "tokenizer; name the one its weights were trained with"
        )
    return tokenizer


def _task_rows(cfg: Config, examples: list, tokenizer: Tokenizer) -> TaskRows:
    d = cfg.data
    if d.task == "masked_lm":
        return masked_lm_rows(
            examples,
            tokenizer,
            seq_len=d.seq_len,
            probability=d.mlm_probability,
            next_sentence=d.next_sentence,
        )
    if d.task == "classification":
        return classification_rows(examples, tokenizer, seq_len=d.seq_len, truncate=d.truncate)
    if d.task in ("completion", "chat"):
        rows = completion_rows if d.task == "completion" else chat_rows
        return rows(
            examples, tokenizer, seq_len=d.seq_len, truncate=d.truncate, pack=d.pack_completions
        )
    if d.task == "span_corruption":
        return span_corruption_rows(examples, tokenizer, **span_settings(d))
    return seq2seq_rows(
        examples, tokenizer, seq_len=d.seq_len, target_len=target_length(d), truncate=d.truncate
    )


def _limited(batches: Iterable[Batch], limit: int) -> Iterable[Batch]:
    return itertools.islice(batches, limit) if limit else batches


def _packed_lm_data(cfg: Config, train, held_out, tokenizer) -> TrainingData:
    from jaxlm.data.pipeline import lm_dataset  # TensorFlow only where it is needed

    def dataset(documents, training: bool):
        return lm_dataset(
            documents,
            tokenizer,
            seq_len=cfg.data.seq_len,
            batch_size=cfg.data.batch_size // jax.process_count(),
            seed=cfg.train.seed,
            shuffle=training,
            repeat=training,
            shuffle_buffer=cfg.data.shuffle_buffer,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def train_batches(start: int) -> Iterator[Batch]:
        return dataset(train, True).skip(start).as_numpy_iterator()

    def eval_batches(limit: int) -> Iterable[Batch]:
        return _limited(dataset(held_out, False).as_numpy_iterator(), limit) if held_out else []

    return TrainingData(tokenizer, train_batches, eval_batches)


def _indexed_data(
    cfg: Config, train, held_out, rows_of: Callable[..., TaskRows], tokenizer, log
) -> TrainingData:
    """Batches of the `rows_of(train)` and `rows_of(held_out)` (when held_out holds any)."""

    def batches(examples, training: bool) -> IndexedBatches:
        rows = rows_of(examples)
        dropped = {reason: n for reason, n in rows.skipped.items() if n}
        if rows.truncated or dropped:
            split = "train" if training else "eval"
            log(f"{split}: {rows.truncated} examples truncated, skipped: {dropped or 'none'}")
        return IndexedBatches(
            rows.count,
            rows.make_row,
            batch_size=cfg.data.batch_size,
            seed=cfg.train.seed,
            shuffle=training,
            repeat=training,
            weight_keys=rows.weight_keys,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    train_rows = batches(train, True) if train else None
    eval_rows = batches(held_out, False) if held_out else None

    def train_batches(start: int) -> Iterator[Batch]:
        if train_rows is None:
            raise DataError("there are no training examples (only held-out ones)")
        return prefetch(train_rows.batches(start))

    return TrainingData(
        tokenizer,
        train_batches,
        lambda limit: _limited(eval_rows.batches(), limit) if eval_rows else [],
    )


def _token_file_data(cfg: Config, log) -> TrainingData:
    from jaxlm.data.token_file import TokenFile

    d = cfg.data
    if d.task not in TOKEN_FILE_TASKS:
        raise ConfigError(
            f"config key 'data.task': the tokens source provides examples for "
            f"{', '.join(TOKEN_FILE_TASKS)}, not {d.task}"
        )
    tokens = TokenFile.open(Path(d.train_files[0]))
    train, held_out = tokens.split(d.eval_fraction)
    tokenizer_path = configured_or_existing(d.tokenizer, Path(cfg.train.workdir))
    tokenizer = None if tokenizer_path is None else load_tokenizer(str(tokenizer_path))
    if tokenizer is not None:
        tokens.check_tokenizer(tokenizer)
    summary = f"token file {d.train_files[0]}: {len(tokens):,} tokens"
    if d.task == "span_corruption":
        if tokenizer is None:
            raise ConfigError(
                "config key 'data.tokenizer': span corruption of a token file needs the "
                "tokenizer it was written with, for its sentinel tokens (or the workdir's own)"
            )

        def rows_of(token_file: TokenFile) -> TaskRows:
            return span_corruption_stream_rows(token_file.tokens, tokenizer, **span_settings(d))

        data = _indexed_data(cfg, train, held_out, rows_of, tokenizer, log)
        data.summary = summary
        return data
    shape = dict(
        seq_len=d.seq_len,
        batch_size=d.batch_size,
        seed=cfg.train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    def eval_batches(limit: int) -> Iterable[Batch]:
        if held_out is None:
            return []
        return _limited(held_out.batches(start=0, shuffle=False, repeat=False, **shape), limit)

    return TrainingData(
        tokenizer,
        lambda start: prefetch(train.batches(start=start, **shape)),
        eval_batches,
        summary=summary,
    )


def training_data(cfg: Config, workdir: str | Path, log=print, splits=None) -> TrainingData:
    """This process's training and evaluation batches for `cfg.data` (see the module doc), or
    for the examples of `splits` (a `jaxlm.data.sources.Splits`) when given."""
    workdir = Path(workdir)
    if splits is not None:
        return _batches_of(cfg, splits, workdir, log)
    if cfg.data.source == "tokens":
        if not cfg.data.train_files:
            raise ConfigError("config key 'data.train_files': give the token file to read")
        return _token_file_data(cfg, log)
    from jaxlm.data.sources import load_splits

    return _batches_of(cfg, load_splits(cfg.data), workdir, log)


def _batches_of(cfg: Config, splits, workdir: Path, log) -> TrainingData:
    tokenizer = prepare_tokenizer(cfg, splits.texts(), workdir, log)
    if cfg.data.task == "causal_lm":
        data = _packed_lm_data(cfg, splits.train, splits.eval, tokenizer)
    else:
        rows_of = functools.partial(_task_rows, cfg, tokenizer=tokenizer)
        data = _indexed_data(cfg, splits.train, splits.eval, rows_of, tokenizer, log)
    data.labels, data.eval_examples = splits.labels, splits.eval
    data.summary = f"{cfg.data.source} data for {cfg.data.task}: {splits.summary()}"
    return data


def data_from_examples(
    cfg: Config, train: list, eval: list = (), labels: list[str] = (), log=print
) -> TrainingData:
    """Batches of in-memory examples for `cfg.data.task`: texts (causal or masked LM, span
    corruption), `(text, label index)` pairs with class names `labels` (classification),
    `(source, target)` pairs (seq2seq) or `(prompt, completion)` pairs. The tokenizer is
    `cfg.data.tokenizer`, or trained into `cfg.train.workdir`."""
    from jaxlm.data.sources import Splits

    workdir = Path(cfg.train.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    splits = Splits(list(train), list(eval), list(labels))
    return training_data(cfg, workdir, log, splits)
