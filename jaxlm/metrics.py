"""Evaluation metrics: language-model totals, classification scores, corpus BLEU and chrF.

Small pure functions over NumPy arrays and Python lists; JAX arrays are accepted (converted with
`np.asarray`). Nothing here needs a device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_STAT_KEYS = ("nll", "weights", "correct")


@dataclass
class TokenTotals:
    """Running sums of the per-batch token statistics from `train.losses.token_statistics`.

    Each batch contributes `nll` (summed negative log-likelihood over weighted tokens),
    `weights` (summed token weights) and `correct` (summed weights of correct argmax tokens).
    Sums are kept as float64 Python floats.
    """

    nll: float = 0.0
    weights: float = 0.0
    correct: float = 0.0

    def add(self, stats: Mapping) -> TokenTotals:
        """Add one batch's `{"nll", "weights", "correct"}` sums; returns self."""
        missing = [key for key in _STAT_KEYS if key not in stats]
        if missing:
            raise ValueError(f"token statistics lack {missing}; got keys {sorted(stats)}")
        self.nll += float(np.asarray(stats["nll"], np.float64))
        self.weights += float(np.asarray(stats["weights"], np.float64))
        self.correct += float(np.asarray(stats["correct"], np.float64))
        return self


def language_model_metrics(totals: TokenTotals) -> dict[str, float]:
    """`loss`, `perplexity`, `token_accuracy` and `tokens` from totals over a whole dataset.

    `loss` is the token-weighted mean NLL (sum nll / sum weights) and `perplexity` is
    exp(loss): computed from the dataset-wide sums, never as an average of per-batch
    perplexities. `tokens` is the summed weight. Raises ValueError if there are no tokens.
    """
    if not totals.weights > 0:
        raise ValueError(f"no weighted tokens to evaluate (sum of weights = {totals.weights})")
    loss = totals.nll / totals.weights
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "token_accuracy": totals.correct / totals.weights,
        "tokens": totals.weights,
    }


def _class_ids(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.number) or np.any(array != np.round(array)):
            raise ValueError(f"{name} must be integer class ids, got dtype {array.dtype}")
    return array.astype(np.int64)


def classification_metrics(
    labels,
    predictions,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> dict:
    """Accuracy and per-class / macro-averaged precision, recall and F1.

    `labels` and `predictions` are 1-D integer class ids in [0, num_classes). `num_classes`
    defaults to `len(class_names)` or else to the largest id seen + 1. A class with no
    predicted examples has precision 0, one with no true examples has recall 0, and F1 is 0
    when precision + recall is 0 (scikit-learn's `zero_division=0`). Macro averages are
    unweighted means over all `num_classes` classes, absent ones included; `macro_f1` is the
    mean of per-class F1 scores. `per_class` maps each class name (`class_names[i]`, else
    `str(i)`) to its `precision`, `recall`, `f1` and `support` (number of true examples).
    Raises ValueError for mismatched lengths, empty input or an id outside [0, num_classes).
    """
    labels = _class_ids(labels, "labels")
    predictions = _class_ids(predictions, "predictions")
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    if labels.size == 0:
        raise ValueError("no examples to evaluate")
    if num_classes is None:
        num_classes = (
            len(class_names)
            if class_names is not None
            else int(max(labels.max(), predictions.max())) + 1
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    for name, ids in (("label", labels), ("prediction", predictions)):
        bad = ids[(ids < 0) | (ids >= num_classes)]
        if bad.size:
            raise ValueError(f"{name} {int(bad[0])} is outside [0, {num_classes})")

    # confusion[i, j]: examples of true class i predicted as class j.
    confusion = np.bincount(
        labels * num_classes + predictions, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    true_positives = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0
    )
    names = class_names if class_names is not None else [str(i) for i in range(num_classes)]
    return {
        "accuracy": float(true_positives.sum() / labels.size),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
    }


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
) -> float:
    """Corpus-level BLEU (0-100) from `sacrebleu.corpus_bleu` with its default settings.

    `references` is either one reference string per hypothesis, or a list of reference
    streams (sacrebleu's layout): `references[k][i]` is the k-th reference of hypothesis i,
    each stream as long as `hypotheses`. Raises ValueError on empty input or a length mismatch.
    """
    import sacrebleu

    hypotheses, streams = _reference_streams(hypotheses, references)
    return float(
        sacrebleu.corpus_bleu(hypotheses, streams, tokenize=tokenize, lowercase=lowercase).score
    )


def corpus_chrf(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> float:
    """Corpus-level chrF (0-100; Popovic 2015) from `sacrebleu.corpus_chrf` with its default
    settings: character n-grams up to 6, whitespace ignored, recall weighted by beta = 2.
    `references` as for `corpus_bleu`."""
    import sacrebleu

    hypotheses, streams = _reference_streams(hypotheses, references)
    return float(sacrebleu.corpus_chrf(hypotheses, streams).score)


def _reference_streams(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """The hypotheses and sacrebleu's reference streams (see `corpus_bleu`), checked."""
    hypotheses = list(hypotheses)
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if not references:
        raise ValueError("no references given")
    if all(isinstance(ref, str) for ref in references):
        streams = [list(references)]
    elif any(isinstance(ref, str) for ref in references):
        raise ValueError("references must be all strings or all lists of strings, not a mix")
    else:
        streams = [list(stream) for stream in references]
    for k, stream in enumerate(streams):
        if len(stream) != len(hypotheses):
            raise ValueError(
                f"{len(hypotheses)} hypotheses but reference stream {k} has {len(stream)} entries"
            )
    return hypotheses, streams
