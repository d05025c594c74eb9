"""Rows for the tasks of one example a row: completions of prompts and conversations (a GPT),
classification, seq2seq and span corruption (masked LM's are in `jaxlm.data.masked_lm`).

Each `*_rows` function tokenizes its examples once and returns `(count, make_row, weight_keys)`
for `IndexedBatches`; `make_row(example, rng)` builds one fixed-length row of NumPy arrays.
Padding has segment id 0 (the models' padding mask) and weight 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxlm.data.chat_template import assistant_turns
from jaxlm.data.span_corruption import corrupt, fit_chunk, noise_mask, sentinel_ids
from jaxlm.data.tokenizer import document_start
from jaxlm.errors import DataError

RowMaker = Callable[[int, np.random.Generator], dict[str, np.ndarray]]

# What one row of each task's batches holds: {key: (dtype, length)}, the length "source" for
# [data.seq_len], "target" for [target_length(data)] and None for a scalar.
_TOKENS, _TOKEN_WEIGHTS = (np.int32, "source"), (np.float32, "source")
_LABEL, _LABEL_WEIGHT = (np.int32, None), (np.float32, None)
_TARGET_TOKENS, _TARGET_WEIGHTS = (np.int32, "target"), (np.float32, "target")
_SEQ2SEQ = dict.fromkeys(("source", "source_segments"), _TOKENS) | dict.fromkeys(
    ("target_inputs", "target_segments", "targets"), _TARGET_TOKENS
)
_CAUSAL = dict.fromkeys(("inputs", "targets", "positions", "segment_ids"), _TOKENS)
BATCH_FEATURES = {
    "causal_lm": _CAUSAL | {"weights": _TOKEN_WEIGHTS},
    "completion": _CAUSAL | {"weights": _TOKEN_WEIGHTS},
    "chat": _CAUSAL | {"weights": _TOKEN_WEIGHTS},
    "masked_lm": dict.fromkeys(("inputs", "type_ids", "segment_ids", "mlm_targets"), _TOKENS)
    | {"mlm_weights": _TOKEN_WEIGHTS, "nsp_labels": _LABEL, "nsp_weights": _LABEL_WEIGHT},
    "classification": dict.fromkeys(("inputs", "type_ids", "segment_ids"), _TOKENS)
    | {"labels": _LABEL, "label_weights": _LABEL_WEIGHT},
    "seq2seq": _SEQ2SEQ | {"weights": _TARGET_WEIGHTS},
    "span_corruption": _SEQ2SEQ | {"weights": _TARGET_WEIGHTS},
}


def span_settings(data) -> dict:
    """The span-corruption settings of a `DataConfig`, as `fit_chunk` and the rows take them."""
    return dict(
        seq_len=data.seq_len,
        target_len=data.target_len,
        density=data.noise_density,
        mean_span=data.mean_noise_span,
    )


def target_length(data) -> int:
    """Tokens per target row of a `DataConfig`: `data.target_len`, else `data.seq_len` for
    seq2seq, or the target of the longest span-corruption chunk that fits a source row."""
    if data.task == "span_corruption":
        return data.target_len or fit_chunk(**span_settings(data)).target
    return data.target_len or data.seq_len


def tokens_per_row(data) -> int:
    """Token positions of one training row of `data.task`: its inputs, and an encoder-decoder's
    targets too (what training's tokens/s counts)."""
    if data.task in ("seq2seq", "span_corruption"):
        return data.seq_len + target_length(data)
    return data.seq_len


@dataclass
class TaskRows:
    """What `IndexedBatches` needs for one task, and how many examples were cut or dropped."""

    count: int
    make_row: RowMaker
    weight_keys: tuple[str, ...]
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def pad_row(ids: Sequence[int], length: int, pad_id: int) -> np.ndarray:
    """`ids` followed by `pad_id` up to `length`, as int32."""
    row = np.full(length, pad_id, np.int32)
    row[: len(ids)] = ids
    return row


def _fit(ids: list[int], room: int, truncate: bool) -> list[int] | None:
    """`ids` cut to `room` tokens, or None when too long and not truncating."""
    if len(ids) <= room:
        return ids
    return ids[:room] if truncate else None


# Completion and chat: sequences trained on some of their tokens

Trained = tuple[list[int], list[int]]  # tokens, and 1 where a token is a trained target


def completion_rows(
    pairs: Sequence[tuple[str, str]], tokenizer, *, seq_len: int, truncate: bool, pack: bool
) -> TaskRows:
    """GPT rows of `(prompt, completion)` pairs: the tokens `[bos] prompt completion [eos]` (no
    bos for a tokenizer without one), trained on the completion and its EOS alone (see
    `_trained_rows`). The prompt and the completion are encoded apart, so the completion starts
    a new token. A pair whose tokens exceed seq_len + 1 loses the end of its completion
    (`truncate`) or is skipped, as is a prompt that leaves no room for one completion token."""
    start, eos = document_start(tokenizer), tokenizer.eos_id
    prompts = tokenizer.encode_batch([prompt for prompt, _ in pairs])
    completions = tokenizer.encode_batch([completion for _, completion in pairs])
    fitted, truncated, skipped = [], 0, 0
    for prompt, completion in zip(prompts, completions, strict=True):
        head = [*start, *prompt]
        room = seq_len + 1 - len(head)
        tail = _fit([*completion, eos], room, truncate) if room > 0 else None
        if not tail:
            skipped += 1
            continue
        truncated += len(tail) < len(completion) + 1
        fitted.append(([*head, *tail], [0] * len(head) + [1] * len(tail)))
    if not fitted:
        raise DataError(f"all {len(pairs)} prompts and completions are longer than data.seq_len")
    return _trained_rows(fitted, seq_len, pack, truncated, {"too long": skipped})


def chat_rows(
    conversations: Sequence[list[dict[str, str]]],
    tokenizer,
    *,
    seq_len: int,
    truncate: bool,
    pack: bool,
) -> TaskRows:
    """GPT rows of conversations framed by the tokenizer's chat template, trained on the
    assistant's replies (each with its end of turn) alone (see `_trained_rows`). The pieces of
    `assistant_turns` are encoded apart, so each reply starts a new token. A conversation
    longer than seq_len + 1 tokens loses its end (`truncate`, while a trained token is left) or
    is skipped; one without an assistant message is skipped."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise DataError(
            "data.task=chat frames conversations with the tokenizer's chat template, and this "
            "tokenizer has none (a Hugging Face tokenizer's chat_template.jinja, or "
            "chat_template in its tokenizer_config.json)"
        )
    cut = [assistant_turns(template, c, tokenizer.special) for c in conversations]
    encoded = iter(tokenizer.encode_batch([text for pieces in cut for text, _ in pieces]))
    fitted, truncated, skipped = [], 0, {"too long": 0, "without a reply": 0}
    for pieces in cut:
        tokens, trained = [], []
        for _, reply in pieces:
            ids = next(encoded)
            tokens += ids
            trained += [int(reply)] * len(ids)
        if not any(trained):
            skipped["without a reply"] += 1
            continue
        if len(tokens) > seq_len + 1:
            if not truncate or not any(trained[1 : seq_len + 1]):
                skipped["too long"] += 1
                continue
            tokens, trained = tokens[: seq_len + 1], trained[: seq_len + 1]
            truncated += 1
        fitted.append((tokens, trained))
    if not fitted:
        raise DataError(
            f"none of the {len(conversations)} conversations has a reply within data.seq_len"
        )
    return _trained_rows(fitted, seq_len, pack, truncated, skipped)


def _trained_rows(
    examples: list[Trained], seq_len: int, pack: bool, truncated: int, skipped: dict[str, int]
) -> TaskRows:
    """Rows of token sequences at most seq_len + 1 long, with keys inputs, targets (the inputs
    shifted by one), weights (1 where the target is trained on), positions (from 0 in each
    example) and segment_ids (1, 2, ... for the examples of a row, 0 on padding, which is id 0),
    `seq_len` long. With `pack`, a row holds the examples that follow each other while they
    fit, else one."""
    rows = [[example] for example in examples]
    if pack:  # each example takes its tokens less one input positions
        rows, used = [], seq_len
        for tokens, trained in examples:
            width = len(tokens) - 1
            if used + width > seq_len:
                rows.append([])
                used = 0
            rows[-1].append((tokens, trained))
            used += width

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        parts = {key: [] for key in ("inputs", "targets", "weights", "positions", "segment_ids")}
        for segment, (tokens, trained) in enumerate(rows[example], 1):
            width = len(tokens) - 1
            parts["inputs"] += tokens[:-1]
            parts["targets"] += tokens[1:]
            parts["weights"] += trained[1:]
            parts["positions"] += range(width)
            parts["segment_ids"] += [segment] * width
        row = {key: pad_row(values, seq_len, 0) for key, values in parts.items()}
        return row | {"weights": row["weights"].astype(np.float32)}

    return TaskRows(len(rows), make_row, ("weights",), truncated, skipped)


# Classification


def classification_rows(
    examples: Sequence[tuple[str, int]], tokenizer, *, seq_len: int, truncate: bool
) -> TaskRows:
    """`[CLS] text [SEP]` rows with `labels`; keys inputs, type_ids, segment_ids, labels,
    label_weights."""
    encoded = tokenizer.encode_batch([text for text, _ in examples])
    rows, truncated, skipped = [], 0, 0
    for ids, (_, label) in zip(encoded, examples, strict=True):
        fitted = _fit(list(ids), seq_len - 2, truncate)
        if fitted is None:
            skipped += 1
            continue
        truncated += len(fitted) < len(ids)
        rows.append(([tokenizer.cls_id, *fitted, tokenizer.sep_id], label))
    if not rows:
        raise DataError(f"all {len(examples)} examples are longer than data.seq_len={seq_len}")

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens, label = rows[example]
        return {
            "inputs": pad_row(tokens, seq_len, tokenizer.pad_id),
            "type_ids": np.zeros(seq_len, np.int32),
            "segment_ids": pad_row(np.ones(len(tokens)), seq_len, 0),
            "labels": np.int32(label),
            "label_weights": np.float32(1),
        }

    return TaskRows(len(rows), make_row, ("label_weights",), truncated, {"too long": skipped})


# Sequence to sequence


def seq2seq_row(
    source: Sequence[int], target: Sequence[int], tokenizer, seq_len: int, target_len: int
) -> dict[str, np.ndarray]:
    """Source `source [eos]`, decoder inputs `[bos] target` and targets `target [eos]`, padded to
    `seq_len` (source) and `target_len` tokens."""
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    target_ones = np.ones(len(target) + 1)
    return {
        "source": pad_row([*source, eos], seq_len, pad),
        "source_segments": pad_row(np.ones(len(source) + 1), seq_len, 0),
        "target_inputs": pad_row([bos, *target], target_len, pad),
        "target_segments": pad_row(target_ones, target_len, 0),
        "targets": pad_row([*target, eos], target_len, pad),
        "weights": pad_row(target_ones, target_len, 0).astype(np.float32),
    }


def seq2seq_rows(
    pairs: Sequence[tuple[str, str]],
    tokenizer,
    *,
    seq_len: int,
    truncate: bool,
    target_len: int | None = None,
) -> TaskRows:
    """`seq2seq_row`s of the pairs, targets of `target_len` tokens (None = seq_len); keys source,
    source_segments, target_inputs, target_segments, targets, weights. Targets are encoded by
    the tokenizer's `encode_target_batch` where it has one (Marian's: another language's
    model), else like the sources."""
    target_len = target_len or seq_len
    sources = tokenizer.encode_batch([source for source, _ in pairs])
    encode_targets = getattr(tokenizer, "encode_target_batch", tokenizer.encode_batch)
    targets = encode_targets([target for _, target in pairs])
    rows, truncated, skipped = [], 0, 0
    for source, target in zip(sources, targets, strict=True):
        fitted = [
            _fit(list(ids), room - 1, truncate)
            for ids, room in ((source, seq_len), (target, target_len))
        ]
        if None in fitted:
            skipped += 1
            continue
        truncated += len(fitted[0]) < len(source) or len(fitted[1]) < len(target)
        rows.append(fitted)
    if not rows:
        raise DataError(
            f"all {len(pairs)} pairs are longer than data.seq_len={seq_len} "
            f"(sources) or {target_len} (targets)"
        )

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return seq2seq_row(*rows[example], tokenizer, seq_len, target_len)

    return TaskRows(len(rows), make_row, ("weights",), truncated, {"too long": skipped})


# Span corruption


def span_corruption_rows(documents: Sequence[str], tokenizer, **settings) -> TaskRows:
    """`span_corruption_stream_rows` of the documents, each followed by EOS, in one stream."""
    eos = [tokenizer.eos_id]
    stream = np.fromiter(
        (t for ids in tokenizer.encode_batch(list(documents)) for t in (*ids, *eos)), np.int32
    )
    return span_corruption_stream_rows(stream, tokenizer, **settings)


def span_corruption_stream_rows(
    stream: np.ndarray,
    tokenizer,
    *,
    seq_len: int,
    target_len: int | None,
    density: float,
    mean_span: float,
) -> TaskRows:
    """`seq2seq_row`s of span corruption (`jaxlm.data.span_corruption`): a token stream (such as
    a memory-mapped token file) cut into the longest chunks whose source fits `seq_len` and
    target `target_len` (None = any). Each time a row is made, its noise is drawn anew from its
    generator."""
    chunk = fit_chunk(seq_len, target_len, density, mean_span)
    sentinels = sentinel_ids(tokenizer, chunk.spans)
    count = -(-len(stream) // chunk.chunk)
    if len(stream) % chunk.chunk == 1:  # a last chunk of one token has nothing to corrupt
        count -= 1
    if count == 0:
        raise DataError("the span-corruption documents contain no text")
    rows_target = target_len or chunk.target

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = np.asarray(stream[example * chunk.chunk : (example + 1) * chunk.chunk], np.int32)
        noise = noise_mask(len(tokens), density, mean_span, rng)
        source, target = corrupt(tokens, noise, sentinels)
        return seq2seq_row(source, target, tokenizer, seq_len, rows_target)

    return TaskRows(count, make_row, ("weights",))


def seq2seq_sources(
    texts: Sequence[str], tokenizer, *, seq_len: int, truncate: bool
) -> list[list[int] | None]:
    """Each source text as `seq2seq_rows` feeds it to the encoder, `ids [eos]` without padding,
    or None where it is longer than `seq_len` - 1 tokens and not truncated."""
    fitted = (_fit(list(ids), seq_len - 1, truncate) for ids in tokenizer.encode_batch(texts))
    return [None if ids is None else [*ids, tokenizer.eos_id] for ids in fitted]
