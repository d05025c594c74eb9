"""Training rows as text, as `jaxlm data show --rows` prints them: the tokens a row feeds the
model and those it is trained to predict, decoded, padding left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# task: (name, token key, key > 0 where a token counts, decode token by token) of each line
SHOWN = {
    "causal_lm": (("text", "inputs", "segment_ids", False),),
    "completion": (
        ("text", "inputs", "segment_ids", False),
        ("trained on", "targets", "weights", False),
    ),
    "masked_lm": (
        ("inputs", "inputs", "segment_ids", False),
        ("predicts", "mlm_targets", "mlm_weights", True),
    ),
    "classification": (("text", "inputs", "segment_ids", False),),
    "seq2seq": (
        ("source", "source", "source_segments", False),
        ("target", "targets", "weights", False),
    ),
}
SHOWN["span_corruption"] = SHOWN["seq2seq"]
SHOWN["chat"] = SHOWN["completion"]


def row_lines(
    task: str, row: dict[str, np.ndarray], tokenizer, labels: Sequence[str] = ()
) -> list[str]:
    """`name (N tokens): 'text'` (a Python string literal: newlines show as \\n) for each part of
    one row of `task`, and its label if it has one (a class name, or whether a next-sentence
    pair is random)."""
    lines = []
    for name, tokens, counts, by_token in SHOWN[task]:
        ids = [int(i) for i in np.asarray(row[tokens])[np.asarray(row[counts]) > 0]]
        if by_token:
            text = " ".join(repr(tokenizer.decode([i])) for i in ids)
        else:
            text = repr(tokenizer.decode(ids))
        lines.append(f"{name} ({len(ids)} tokens): {text}")
    if "labels" in row:
        lines.append(f"label: {labels[int(row['labels'])]}")
    if "nsp_labels" in row:
        lines.append(f"second block: {'random' if row['nsp_labels'] else 'next'}")
    return lines
