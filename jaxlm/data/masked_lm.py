"""Masked LM rows (BERT): `[CLS] A [SEP] B [SEP]` of sentence blocks, with next-sentence pairs,
and the 80/10/10 masking of the selected tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.data.tasks import TaskRows, pad_row
from jaxlm.errors import DataError


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
            "inputs": pad_row(inputs, seq_len, tokenizer.pad_id),
            "type_ids": type_ids,
            "segment_ids": pad_row(np.ones(length), seq_len, 0),
            "mlm_targets": pad_row(tokens, seq_len, tokenizer.pad_id),
            "mlm_weights": pad_row(weights, seq_len, 0).astype(np.float32),
        }

    keys = ("mlm_weights", "nsp_weights") if next_sentence else ("mlm_weights",)
    return TaskRows(len(anchors), make_row, keys)
