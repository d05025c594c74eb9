"""Rows for the tasks of one example a row: completions of prompts (a GPT), masked LM (with
next-sentence pairs), classification, seq2seq and span corruption.

Each `*_rows` function tokenizes its examples once and returns `(count, make_row, weight_keys)`
for `IndexedBatches`; `make_row(example, rng)` builds one fixed-length row of NumPy arrays.
Padding has segment id 0 (the models' padding mask) and weight 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

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


def _pad(ids: Sequence[int], length: int, pad_id: int) -> np.ndarray:
    row = np.full(length, pad_id, np.int32)
    row[: len(ids)] = ids
    return row


def _fit(ids: list[int], room: int, truncate: bool) -> list[int] | None:
    """`ids` cut to `room` tokens, or None when too long and not truncating."""
    if len(ids) <= room:
        return ids
    return ids[:room] if truncate else None


# Completion


def completion_rows(
    pairs: Sequence[tuple[str, str]], tokenizer, *, seq_len: int, truncate: bool, pack: bool
) -> TaskRows:
    """GPT rows of `(prompt, completion)` pairs: the tokens `[bos] prompt completion [eos]` (no
    bos for a tokenizer without one), trained on the completion and its EOS alone. Keys inputs,
    targets (the inputs shifted by one), weights (1 where the target is in the completion),
    positions (from 0 in each pair) and segment_ids (1, 2, ... for the pairs of a row, 0 on
    padding, which is id 0), `seq_len` long. With `pack`, a row holds the pairs that follow each
    other while they fit, else one. The prompt and the completion are encoded apart, so the
    completion starts a new token. A pair whose tokens exceed seq_len + 1 loses the end of its
    completion (`truncate`) or is skipped, as is a prompt that leaves no room for one
    completion token."""
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
        fitted.append((head, tail))
    if not fitted:
        raise DataError(f"all {len(pairs)} prompts and completions are longer than data.seq_len")
    rows = [[pair] for pair in fitted]
    if pack:  # each pair takes its tokens less one input positions
        rows, used = [], seq_len
        for head, tail in fitted:
            width = len(head) + len(tail) - 1
            if used + width > seq_len:
                rows.append([])
                used = 0
            rows[-1].append((head, tail))
            used += width

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        parts = {key: [] for key in ("inputs", "targets", "weights", "positions", "segment_ids")}
        for segment, (head, tail) in enumerate(rows[example], 1):
            tokens = [*head, *tail]
            width = len(tokens) - 1
            parts["inputs"] += tokens[:-1]
            parts["targets"] += tokens[1:]
            parts["weights"] += [0] * (len(head) - 1) + [1] * len(tail)
            parts["positions"] += range(width)
            parts["segment_ids"] += [segment] * width
        row = {key: _pad(values, seq_len, 0) for key, values in parts.items()}
        return row | {"weights": row["weights"].astype(np.float32)}

    return TaskRows(len(rows), make_row, ("weights",), truncated, {"too long": skipped})


# Masked LM


def mask_tokens(
    tokens: np.ndarray,
    maskable: np.ndarray,
    rng: np.random.Generator,
    *,
    probability: float,
    mask_id: int,
    random_ids: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: (inputs, weights) where each maskable token is selected with `probability`;
    selected tokens become `mask_id` (80%), a random id in `random_ids` [low, high) (10%), or
    stay as they are (10%). Targets are the original `tokens`, weighted where selected."""
    selected = maskable & (rng.random(tokens.shape) < probability)
    action = rng.random(tokens.shape)
    inputs = tokens.copy()
    inputs[selected & (action < 0.8)] = mask_id
    randomized = selected & (action >= 0.8) & (action < 0.9)
    inputs[randomized] = rng.integers(*random_ids, size=int(randomized.sum()))
    return inputs, selected.astype(np.float32)


def sentence_blocks(
    documents: Sequence[str], tokenizer, block_len: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each document's lines (its sentences) tokenized and grouped greedily into blocks of at
    most `block_len` tokens; a line longer than a block is split. Returns (blocks, document of
    each block)."""
    lines = [[line for line in doc.split("\n") if line.strip()] for doc in documents]
    encoded = iter(tokenizer.encode_batch([line for doc in lines for line in doc]))
    blocks, owners = [], []
    for doc_index, doc in enumerate(lines):
        current: list[int] = []
        for _ in doc:
            ids = list(next(encoded))
            if current and len(current) + len(ids) > block_len:
                blocks.append(current)
                owners.append(doc_index)
                current = []
            current.extend(ids)
            while len(current) > block_len:
                blocks.append(current[:block_len])
                owners.append(doc_index)
                current = current[block_len:]
        if current:
            blocks.append(current)
            owners.append(doc_index)
    return [np.asarray(b, np.int32) for b in blocks], np.asarray(owners)


def masked_lm_rows(
    documents: Sequence[str],
    tokenizer,
    *,
    seq_len: int,
    probability: float,
    next_sentence: bool,
) -> TaskRows:
    """`[CLS] A [SEP]` rows, or with `next_sentence` `[CLS] A [SEP] B [SEP]` pairs where B is the
    block after A (nsp_labels 0) or, half of the time, a random block of another document (1).

    Keys: inputs, type_ids, segment_ids, mlm_targets, mlm_weights (+ nsp_labels, nsp_weights).
    """
    special = (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    budget = seq_len - (3 if next_sentence else 2)
    if budget < 2:
        raise DataError(f"data.seq_len={seq_len} leaves no room for masked-LM text")
    blocks, owners = sentence_blocks(documents, tokenizer, budget // 2 if next_sentence else budget)
    if not blocks:
        raise DataError("the masked-LM documents contain no text")
    if next_sentence:
        # Anchors are blocks followed by another block of the same document.
        anchors = np.flatnonzero(owners[:-1] == owners[1:])
        if len(anchors) == 0 or owners[0] == owners[-1]:
            raise DataError(
                "next-sentence pairs need at least two documents, one of them longer than half "
                "a row: use larger documents (data.document_unit) or data.next_sentence=false"
            )
    else:
        anchors = np.arange(len(blocks))
    random_ids = (max(special) + 1, tokenizer.vocab_size)
    # Blocks of a document are contiguous: [doc_start, doc_end) of each block's document.
    doc_start = np.searchsorted(owners, owners, side="left")
    doc_end = np.searchsorted(owners, owners, side="right")

    def random_block(anchor: int, rng: np.random.Generator) -> np.ndarray:
        """A uniformly drawn block of any other document than the anchor's."""
        start, end = doc_start[anchor], doc_end[anchor]
        index = int(rng.integers(len(blocks) - (end - start)))
        return blocks[index + (end - start) if index >= start else index]

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        anchor = int(anchors[example])
        first, second, row = blocks[anchor], np.zeros(0, np.int32), {}
        if next_sentence:
            is_random = bool(rng.random() < 0.5)
            second = random_block(anchor, rng) if is_random else blocks[anchor + 1]
            second = second[: budget - len(first)]
            row["nsp_labels"] = np.int32(is_random)
            row["nsp_weights"] = np.float32(1)
        pieces = [[tokenizer.cls_id], first, [tokenizer.sep_id]]
        if next_sentence:
            pieces += [second, [tokenizer.sep_id]]
        tokens = np.concatenate(pieces).astype(np.int32)
        length = len(tokens)
        type_ids = np.zeros(seq_len, np.int32)
        type_ids[len(first) + 2 : length] = 1
        maskable = np.zeros(length, bool)
        maskable[1 : len(first) + 1] = True
        maskable[len(first) + 2 : length - 1] = True
        inputs, weights = mask_tokens(
            tokens,
            maskable,
            rng,
            probability=probability,
            mask_id=tokenizer.mask_id,
            random_ids=random_ids,
        )
        return row | {
            "inputs": _pad(inputs, seq_len, tokenizer.pad_id),
            "type_ids": type_ids,
            "segment_ids": _pad(np.ones(length), seq_len, 0),
            "mlm_targets": _pad(tokens, seq_len, tokenizer.pad_id),
            "mlm_weights": _pad(weights, seq_len, 0).astype(np.float32),
        }

    keys = ("mlm_weights", "nsp_weights") if next_sentence else ("mlm_weights",)
    return TaskRows(len(anchors), make_row, keys)


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
            "inputs": _pad(tokens, seq_len, tokenizer.pad_id),
            "type_ids": np.zeros(seq_len, np.int32),
            "segment_ids": _pad(np.ones(len(tokens)), seq_len, 0),
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
        "source": _pad([*source, eos], seq_len, pad),
        "source_segments": _pad(np.ones(len(source) + 1), seq_len, 0),
        "target_inputs": _pad([bos, *target], target_len, pad),
        "target_segments": _pad(target_ones, target_len, 0),
        "targets": _pad([*target, eos], target_len, pad),
        "weights": _pad(target_ones, target_len, 0).astype(np.float32),
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
