"""Documents packed into language-model rows with plain loops (a test reference)."""

import itertools

import numpy as np

FEATURES = ("inputs", "targets", "weights", "positions", "segment_ids")


def packed_rows(documents, tokenizer, seq_len, repeat=False, min_tokens=0) -> list[dict]:
    """The documents, each as BOS + tokens + EOS, concatenated in order and cut into rows of
    seq_len + 1 tokens, with every feature derived from which document each token came from.
    With `repeat`, the documents cycle until at least `min_tokens` tokens are read."""
    tokens, document_of_token = [], []
    docs = itertools.cycle(documents) if repeat else documents
    for number, doc in enumerate(docs):
        ids = [tokenizer.bos_id, *tokenizer.encode(doc), tokenizer.eos_id]
        tokens += ids
        document_of_token += [number] * len(ids)
        if repeat and len(tokens) >= min_tokens:
            break
    rows = []
    for start in range(0, len(tokens) - seq_len, seq_len + 1):
        row = tokens[start : start + seq_len + 1]
        doc = document_of_token[start : start + seq_len + 1]
        segments, positions = [1], [0]
        for j in range(1, seq_len):
            new_segment = doc[j] != doc[j - 1]
            segments.append(segments[-1] + new_segment)
            positions.append(0 if new_segment else positions[-1] + 1)
        rows.append(
            {
                "inputs": row[:-1],
                "targets": row[1:],
                "weights": [float(doc[j] == doc[j + 1]) for j in range(seq_len)],
                "positions": positions,
                "segment_ids": segments,
            }
        )
    return rows


def stacked(rows: list[dict]) -> dict:
    """Rows as a dict of arrays, rows first."""
    return {key: np.array([row[key] for row in rows]) for key in FEATURES}
