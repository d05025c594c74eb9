"""Evaluation metrics against independent references: float64 NumPy cross-entropy, a loop-based
confusion matrix, hand-worked examples, sacrebleu itself and chrF counted by its definition."""

from collections import Counter

import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from jaxlm.metrics import (
    TokenTotals,
    classification_metrics,
    corpus_bleu,
    corpus_chrf,
    language_model_metrics,
)
from jaxlm.train.losses import token_statistics

VOCAB = 37
# (batch, length, share of targets boosted to likely): different sizes, and easy and hard
# batches, so that per-batch perplexities differ widely.
BATCHES = [(2, 5, 0.1), (5, 9, 0.5), (1, 3, 0.0), (3, 16, 0.9)]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _random_batches(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    batches = []
    for b, length, share in BATCHES:
        logits = rng.standard_normal((b, length, VOCAB))
        targets = rng.integers(0, VOCAB, (b, length))
        hint = np.where(rng.random((b, length)) < share, 5.0, 0.0)
        target_logits = np.take_along_axis(logits, targets[..., None], -1)
        np.put_along_axis(logits, targets[..., None], target_logits + hint[..., None], -1)
        weights = (rng.random((b, length)) > 0.25).astype(np.float64)
        weights[0, 0] = 1.0  # every batch has at least one token
        batches.append((logits, targets, weights))
    return batches


def _numpy_stats(logits, targets, weights) -> dict:
    nll = -np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == targets
    return {
        "nll": (nll * weights).sum(),
        "weights": weights.sum(),
        "correct": (correct * weights).sum(),
    }


def test_perplexity_from_summed_nll_over_batches():
    batches = _random_batches()
    totals = TokenTotals()
    for batch in batches:
        totals.add(_numpy_stats(*batch))
    metrics = language_model_metrics(totals)

    # Reference over the concatenated tokens of all batches, in float64.
    logits = np.concatenate([lg.reshape(-1, VOCAB) for lg, _, _ in batches])
    targets = np.concatenate([t.ravel() for _, t, _ in batches])
    weights = np.concatenate([w.ravel() for _, _, w in batches])
    token_nll = -_log_softmax(logits)[np.arange(targets.size), targets]
    mean_nll = np.sum(token_nll * weights) / np.sum(weights)
    accuracy = np.sum((logits.argmax(-1) == targets) * weights) / np.sum(weights)

    assert metrics["loss"] == pytest.approx(mean_nll, rel=1e-12)
    assert metrics["perplexity"] == pytest.approx(np.exp(mean_nll), rel=1e-12)
    assert metrics["token_accuracy"] == pytest.approx(accuracy, rel=1e-12)
    assert metrics["tokens"] == np.sum(weights)

    # Averaging per-batch perplexities is a different (wrong) number on this data.
    per_batch = [language_model_metrics(TokenTotals().add(_numpy_stats(*b))) for b in batches]
    averaged = np.mean([m["perplexity"] for m in per_batch])
    assert abs(averaged - np.exp(mean_nll)) > 0.05 * np.exp(mean_nll)


def test_token_totals_accept_jax_stats_from_train_code():
    batches = _random_batches(seed=1)
    jax_totals, np_totals = TokenTotals(), TokenTotals()
    for logits, targets, weights in batches:
        jax_totals.add(token_statistics(jnp.asarray(logits), jnp.asarray(targets), weights))
        np_totals.add(_numpy_stats(logits, targets, weights))
    got, want = language_model_metrics(jax_totals), language_model_metrics(np_totals)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5)


def test_language_model_metrics_rejects_zero_tokens():
    with pytest.raises(ValueError, match="no weighted tokens"):
        language_model_metrics(TokenTotals())
    empty = {"nll": 0.0, "weights": 0.0, "correct": 0.0}
    with pytest.raises(ValueError, match="no weighted tokens"):
        language_model_metrics(TokenTotals().add(empty))
    with pytest.raises(ValueError, match="correct"):
        TokenTotals().add({"nll": 1.0, "weights": 2.0})


def _loop_reference(labels, predictions, num_classes):
    """Naive confusion matrix and per-class scores with zero_division=0."""
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for label, prediction in zip(labels, predictions, strict=True):
        confusion[label][prediction] += 1
    rows = []
    for c in range(num_classes):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(num_classes))
        support = sum(confusion[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((precision, recall, f1, support))
    correct = sum(confusion[c][c] for c in range(num_classes))
    return correct / len(labels), rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes, n = 6, 200
    labels = rng.integers(0, num_classes - 1, n)  # class 5 never a true label
    # Mostly-correct predictions with noise; class 4 never predicted.
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, num_classes, n))
    predictions[predictions == 4] = 0
    got = classification_metrics(labels, predictions, num_classes=num_classes)
    accuracy, rows = _loop_reference(labels.tolist(), predictions.tolist(), num_classes)

    assert got["accuracy"] == pytest.approx(accuracy)
    for c, (precision, recall, f1, support) in enumerate(rows):
        assert got["per_class"][str(c)] == pytest.approx(
            {"precision": precision, "recall": recall, "f1": f1, "support": support}
        )
    for i, key in enumerate(["macro_precision", "macro_recall", "macro_f1"]):
        assert got[key] == pytest.approx(sum(row[i] for row in rows) / num_classes)
    assert got["per_class"]["4"]["precision"] == 0.0  # never predicted
    assert got["per_class"]["5"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_classification_hand_worked_example():
    # true 0 0 1 1 2 2 / predicted 0 1 1 1 2 0
    # class a: tp 1, predicted 2, true 2 -> P 1/2, R 1/2, F1 1/2
    # class b: tp 2, predicted 3, true 2 -> P 2/3, R 1,   F1 4/5
    # class c: tp 1, predicted 1, true 2 -> P 1,   R 1/2, F1 2/3
    got = classification_metrics(
        [0, 0, 1, 1, 2, 2], jnp.array([0, 1, 1, 1, 2, 0]), class_names=["a", "b", "c"]
    )
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["macro_precision"] == pytest.approx(13 / 18)
    assert got["macro_recall"] == pytest.approx(2 / 3)
    assert got["macro_f1"] == pytest.approx(59 / 90)
    assert got["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert got["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert got["per_class"]["c"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )


def test_classification_absent_classes_score_zero():
    # true 0 0 1 / predicted 0 2 1, four classes:
    # class 0: P 1, R 1/2, F1 2/3; class 1: 1, 1, 1;
    # class 2: predicted once, never true -> 0, 0, 0; class 3: absent -> 0, 0, 0.
    got = classification_metrics([0, 0, 1], [0, 2, 1], num_classes=4)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["macro_precision"] == pytest.approx(2 / 4)
    assert got["macro_recall"] == pytest.approx(1.5 / 4)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1) / 4)
    assert got["per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert got["per_class"]["3"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="label 3 is outside"):
        classification_metrics([0, 3, 1], [0, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match="label -1 is outside"):
        classification_metrics([0, -1], [0, 1])
    with pytest.raises(ValueError, match="prediction 5 is outside"):
        classification_metrics([0, 1], [0, 5], class_names=["neg", "pos"])
    with pytest.raises(ValueError, match="2 labels but 3 predictions"):
        classification_metrics([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="integer class ids"):
        classification_metrics([0.5, 1.0], [0, 1])


# English source sentences (for the reader), German references and imperfect German outputs.
PAIRS = [
    ("The weather is nice today.", "Das Wetter ist heute schön.", "Das Wetter ist schön heute."),
    (
        "I would like a cup of coffee.",
        "Ich hätte gern eine Tasse Kaffee.",
        "Ich möchte eine Tasse Kaffee.",
    ),
    ("Where is the train station?", "Wo ist der Bahnhof?", "Wo ist der Bahnhof?"),
    (
        "She reads a book in the garden.",
        "Sie liest ein Buch im Garten.",
        "Sie liest im Garten ein Buch.",
    ),
    (
        "We are going to the cinema tomorrow.",
        "Wir gehen morgen ins Kino.",
        "Morgen gehen wir in das Kino.",
    ),
    (
        "The children are playing outside.",
        "Die Kinder spielen draußen.",
        "Die Kinder spielen im Freien.",
    ),
]
REFERENCES = [ref for _, ref, _ in PAIRS]
HYPOTHESES = [hyp for _, _, hyp in PAIRS]
SECOND_REFERENCES = [
    "Heute ist das Wetter schön.",
    "Ich möchte gern eine Tasse Kaffee.",
    "Wo befindet sich der Bahnhof?",
    "Sie liest im Garten ein Buch.",
    "Morgen gehen wir ins Kino.",
    "Die Kinder spielen im Freien.",
]


def test_bleu_matches_sacrebleu_on_real_sentences():
    one = corpus_bleu(HYPOTHESES, REFERENCES)
    assert one == sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert 0.0 < one < 100.0
    two = corpus_bleu(HYPOTHESES, [REFERENCES, SECOND_REFERENCES])
    assert two == sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES, SECOND_REFERENCES]).score
    assert two > one  # the second stream matches several outputs exactly


def test_bleu_known_cases():
    assert corpus_bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)
    disjoint = ["Der Hund bellt laut", "Katzen schlafen viel"]  # no shared token, no punctuation
    assert corpus_bleu(disjoint, ["Wir essen Äpfel und Birnen", "Es regnet heute"]) == 0.0


def _chrf_by_definition(hypotheses, references, order=6, beta=2.0) -> float:
    """Corpus chrF as Popovic (2015) and sacreBLEU define it, counted naively: character n-grams
    (n = 1..6) of the texts without whitespace, matches summed over the corpus per n; precision
    and recall averaged over the n both texts have, then their F-beta."""
    totals = [[0, 0, 0] for _ in range(order)]  # hypothesis n-grams, reference n-grams, matches
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hypothesis, reference = "".join(hypothesis.split()), "".join(reference.split())
        for n in range(1, order + 1):
            grams = [
                Counter(text[i : i + n] for i in range(len(text) - n + 1))
                for text in (hypothesis, reference)
            ]
            totals[n - 1][0] += sum(grams[0].values())
            totals[n - 1][1] += sum(grams[1].values())
            totals[n - 1][2] += sum((grams[0] & grams[1]).values())
    kept = [(match / hyp, match / ref) for hyp, ref, match in totals if hyp and ref]
    precision = sum(p for p, _ in kept) / len(kept)
    recall = sum(r for _, r in kept) / len(kept)
    return 100 * (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def test_chrf_matches_its_definition_on_real_sentences():
    score = corpus_chrf(HYPOTHESES, REFERENCES)
    assert score == pytest.approx(_chrf_by_definition(HYPOTHESES, REFERENCES), abs=1e-9)
    assert corpus_bleu(HYPOTHESES, REFERENCES) < score < 100  # partial words still count
    assert corpus_chrf(REFERENCES, REFERENCES) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="6 hypotheses but reference stream 0 has 5"):
        corpus_chrf(HYPOTHESES, REFERENCES[:5])


def test_bleu_rejects_length_mismatch():
    with pytest.raises(ValueError, match="6 hypotheses but reference stream 0 has 5"):
        corpus_bleu(HYPOTHESES, REFERENCES[:5])
    with pytest.raises(ValueError, match="reference stream 1 has 4"):
        corpus_bleu(HYPOTHESES, [REFERENCES, SECOND_REFERENCES[:4]])
    with pytest.raises(ValueError, match="no hypotheses"):
        corpus_bleu([], [])
