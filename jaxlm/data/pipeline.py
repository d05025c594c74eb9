"""Packed causal-LM batches with tf.data.

Each document becomes `[bos] + tokens + [eos]` (no bos for a tokenizer without one); documents
follow each other in one continuous token stream, cut into rows of seq_len + 1 tokens. A row
holds parts of several documents, told apart by `segment_ids`; targets from another document
than their input get weight 0.

All documents are tokenized once, up front; the tf.data graph then slices them out of one flat
token array, so no Python runs per element (and iterators never block interpreter exit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.data.quiet_tensorflow import tensorflow
from jaxlm.data.tokenizer import Tokenizer, document_start
from jaxlm.errors import DataError

tf = tensorflow()


def lm_dataset(
    documents: Sequence[str],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    shuffle_buffer: int = 1024,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """Batches of packed rows: dicts of [batch_size, seq_len] arrays.

    inputs, targets (inputs shifted by one), positions (within the segment), segment_ids
    (1, 2, ... per document within a row): int32; weights (1 where input and target belong to the
    same document, else 0): float32. With shuffle, document order and rows are shuffled (seeded);
    with repeat, the stream runs forever, else it ends with the last full batch.

    In a multi-process run, process `process_index` packs only every `process_count`-th document
    (its share) into `batch_size` rows: its part of the global batch.
    """
    if not documents:
        raise DataError("no documents to make training batches from")
    if len(documents) < process_count:
        raise DataError(
            f"{len(documents)} documents cannot be shared among {process_count} processes: "
            "use a smaller data.document_unit"
        )
    # Tokenize every document once, up front and in one batched call: the pipeline then runs
    # no Python per element, and documents are sliced out of one flat token array.
    encoded = tokenizer.encode_batch(list(documents))
    bos, eos = document_start(tokenizer), [tokenizer.eos_id]
    lengths = np.array([len(bos) + len(ids) + 1 for ids in encoded], np.int64)
    flat = tf.constant(
        np.fromiter(
            (t for ids in encoded for t in (*bos, *ids, *eos)), np.int32, count=int(lengths.sum())
        )
    )
    starts = tf.constant(np.concatenate([[0], np.cumsum(lengths)]))

    def tagged_tokens(count: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        tokens = flat[starts[index] : starts[index + 1]]  # [doc_len]
        return tokens, tf.fill(tf.shape(tokens), count)

    ds = tf.data.Dataset.range(len(documents)).shard(process_count, process_index)
    if shuffle:
        ds = ds.shuffle(len(documents), seed=seed)
    if repeat:
        ds = ds.repeat()
    # The running count tells consecutive repeats of the same document apart.
    ds = ds.enumerate().map(tagged_tokens, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.rebatch(seq_len + 1, drop_remainder=True)  # ([seq_len + 1] tokens, [seq_len + 1] tags)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1)
    ds = ds.batch(batch_size, drop_remainder=True).map(_features)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _features(tokens: tf.Tensor, tags: tf.Tensor) -> dict[str, tf.Tensor]:
    """Model inputs of packed rows. tokens, tags (document counts): [batch, seq_len + 1]."""
    input_tags = tags[:, :-1]  # [batch, seq_len]
    changes = tf.cast(input_tags[:, 1:] != input_tags[:, :-1], tf.int32)  # [batch, seq_len - 1]
    segment_ids = 1 + tf.pad(tf.cumsum(changes, axis=1), [[0, 0], [1, 0]])  # [batch, seq_len]
    # Segment ids are sorted, so searchsorted finds where each input's segment starts.
    starts = tf.searchsorted(segment_ids, segment_ids, side="left")
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": tf.cast(input_tags == tags[:, 1:], tf.float32),
        "positions": tf.range(tf.shape(segment_ids)[1]) - starts,
        "segment_ids": segment_ids,
    }
