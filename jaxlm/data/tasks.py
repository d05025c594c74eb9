"""Rows for the encoder tasks: masked LM (with next-sentence pairs), classification, seq2seq.

Each `*_rows` function tokenizes its examples once and returns `(count, make_row, weight_keys)`
for `IndexedBatches`; `make_row(example, rng)` builds one fixed-length row of NumPy arrays.
Padding has segment id 0 (the models' padding mask) and weight 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxlm.errors import DataError

RowMaker = Callable[[int, np.random.Generator], dict[str, np.ndarray]]

# What one row of each task's batches holds: {key: (dtype, True if [seq_len] else scalar)}.
_TOKENS, _TOKEN_WEIGHTS = (np.int32, True), (np.float32, True)
_LABEL, _LABEL_WEIGHT = (np.int32, False), (np.float32, False)
BATCH_FEATURES = {
    "causal_lm": dict.fromkeys(("inputs", "targets", "positions", "segment_ids"), _TOKENS)
    | {"weights": _TOKEN_WEIGHTS},
    "masked_lm": dict.fromkeys(("inputs", "type_ids", "segment_ids", "mlm_targets"), _TOKENS)
    | {"mlm_weights": _TOKEN_WEIGHTS, "nsp_labels": _LABEL, "nsp_weights": _LABEL_WEIGHT},
    "classification": dict.fromkeys(("inputs", "type_ids", "segment_ids"), _TOKENS)
    | {"labels": _LABEL, "label_weights": _LABEL_WEIGHT},
    "seq2seq": dict.fromkeys(
        ("source", "source_segments", "target_inputs", "target_segments", "targets"), _TOKENS
    )
    | {"weights": _TOKEN_WEIGHTS},
}


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


def seq2seq_rows(
    pairs: Sequence[tuple[str, str]], tokenizer, *, seq_len: int, truncate: bool
) -> TaskRows:
    """Source rows `ids [eos]`, decoder inputs `[bos] ids` and targets `ids [eos]`; keys source,
    source_segments, target_inputs, target_segments, targets, weights. Targets are encoded by
    the tokenizer's `encode_target_batch` where it has one (Marian's: another language's
    model), else like the sources."""
    sources = tokenizer.encode_batch([source for source, _ in pairs])
    encode_targets = getattr(tokenizer, "encode_target_batch", tokenizer.encode_batch)
    targets = encode_targets([target for _, target in pairs])
    rows, truncated, skipped = [], 0, 0
    for source, target in zip(sources, targets, strict=True):
        fitted = [_fit(list(ids), seq_len - 1, truncate) for ids in (source, target)]
        if None in fitted:
            skipped += 1
            continue
        truncated += len(fitted[0]) < len(source) or len(fitted[1]) < len(target)
        rows.append(fitted)
    if not rows:
        raise DataError(f"all {len(pairs)} pairs are longer than data.seq_len={seq_len}")
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id

    def make_row(example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        source, target = rows[example]
        target_ones = np.ones(len(target) + 1)
        return {
            "source": _pad([*source, eos], seq_len, pad),
            "source_segments": _pad(np.ones(len(source) + 1), seq_len, 0),
            "target_inputs": _pad([bos, *target], seq_len, pad),
            "target_segments": _pad(target_ones, seq_len, 0),
            "targets": _pad([*target, eos], seq_len, pad),
            "weights": _pad(target_ones, seq_len, 0).astype(np.float32),
        }

    return TaskRows(len(rows), make_row, ("weights",), truncated, {"too long": skipped})


def seq2seq_sources(
    texts: Sequence[str], tokenizer, *, seq_len: int, truncate: bool
) -> list[list[int] | None]:
    """Each source text as `seq2seq_rows` feeds it to the encoder, `ids [eos]` without padding,
    or None where it is longer than `seq_len` - 1 tokens and not truncated."""
    fitted = (_fit(list(ids), seq_len - 1, truncate) for ids in tokenizer.encode_batch(texts))
    return [None if ids is None else [*ids, tokenizer.eos_id] for ids in fitted]
