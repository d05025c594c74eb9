"""T5's span corruption, the pretraining task of encoder-decoders.

About `density` of a chunk of text, in spans of `mean_span` tokens on average, is noise. The
encoder reads the chunk with each noise span replaced by a sentinel token, `<extra_id_0>`,
`<extra_id_1>`, ...; the decoder writes each noise span after its sentinel:

    chunk    Thank you for inviting me to your party last week
    source   Thank you <extra_id_0> me to your party <extra_id_1>
    target   <extra_id_0> for inviting <extra_id_1> last week

As in T5, noise and kept spans alternate, kept first and noise last, with as many of each; the
split of the noise into spans (and of the rest) is uniform over all splits into that many spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxlm.errors import ConfigError, DataError

SENTINEL = "<extra_id_{}>"
TRAINED_SENTINELS = 100  # sentinels of a tokenizer trained for span corruption (T5's count)


def noise_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a chunk of `length` >= 2 tokens: round(length * density)
    tokens in round(noise / mean_span) spans, at least one of each and one token kept."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = min(max(round(noise / mean_span), 1), noise, length - noise)
    return noise, spans


@dataclass(frozen=True)
class SpanLengths:
    """Token counts of one row: its chunk of text, encoder source and decoder target (each with
    a sentinel per span and EOS), and its noise spans."""

    chunk: int
    source: int
    target: int
    spans: int

    @classmethod
    def of_chunk(cls, length: int, density: float, mean_span: float) -> SpanLengths:
        noise, spans = noise_counts(length, density, mean_span)
        return cls(length, length - noise + spans + 1, noise + spans + 1, spans)


def fit_chunk(
    seq_len: int, target_len: int | None, density: float, mean_span: float
) -> SpanLengths:
    """The lengths of the longest chunk whose source fits `seq_len` tokens and whose target
    fits `target_len` (None = any); for 512 source tokens at T5's settings, 568 and 114."""

    def fits(lengths: SpanLengths) -> bool:
        return lengths.source <= seq_len and (target_len is None or lengths.target <= target_len)

    best = SpanLengths.of_chunk(2, density, mean_span)
    if not fits(best):
        raise ConfigError(
            f"config key 'data.seq_len': rows of {seq_len} source and {target_len} target "
            f"tokens hold no span corruption (a chunk of 2 needs {best.source} and {best.target})"
        )
    # Both lengths grow with the chunk, by at most one token per token.
    while fits(longer := SpanLengths.of_chunk(best.chunk + 1, density, mean_span)):
        best = longer
    return best


def noise_mask(length: int, density: float, mean_span: float, rng: np.random.Generator):
    """A random [length] bool mask, True on noise: `noise_counts` tokens and spans, alternating
    with as many kept spans, kept first."""
    noise, spans = noise_counts(length, density, mean_span)

    def split(total: int) -> np.ndarray:
        """`total` cut into `spans` positive parts, every such cut equally likely."""
        cuts = np.sort(rng.choice(total - 1, spans - 1, replace=False)) + 1
        return np.diff(np.concatenate([[0], cuts, [total]]))

    span_lengths = np.stack([split(length - noise), split(noise)], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), span_lengths)


def corrupt(
    tokens: np.ndarray, noise: np.ndarray, sentinels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(source, target): `tokens` with noise span i replaced by `sentinels[i]`, and each noise
    span i after `sentinels[i]`. No EOS is added."""
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    span = np.cumsum(starts) - 1
    source = np.where(starts, sentinels[span], tokens)[~noise | starts]
    noise_tokens = tokens[noise]
    target = np.insert(noise_tokens, np.flatnonzero(starts[noise]), sentinels[: starts.sum()])
    return source.astype(np.int32), target.astype(np.int32)


def sentinel_ids(tokenizer, count: int) -> np.ndarray:
    """The ids of `<extra_id_0>` ... `<extra_id_{count - 1}>`; a tokenizer without all of them
    raises `DataError`."""
    ids = [tokenizer.token_id(SENTINEL.format(i)) for i in range(count)]
    if None in ids:
        first, last, missing = (SENTINEL.format(i) for i in (0, count - 1, ids.index(None)))
        raise DataError(
            f"span corruption of these rows needs {count} sentinel tokens {first} ... {last}, "
            f"and the tokenizer has no {missing}: "
            "leave data.tokenizer empty to train one with them, train one with `jaxlm tokenizer "
            "train --sentinels N`, or use shorter rows"
        )
    return np.asarray(ids, np.int32)
