"""Attention masks: boolean, True where a query may attend to a key, shaped [batch, 1, q, k]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def causal_mask(length: int, window: int | None = None) -> jax.Array:
    """Position q may attend to key positions k <= q, and with a sliding `window` only to the
    last `window` of them (q - k < window). Shape [1, 1, length, length]."""
    idx = jnp.arange(length)
    return within_window(idx[:, None], idx[None, :], window)[None, None]


def within_window(query_index: jax.Array, key_index: jax.Array, window: int | None) -> jax.Array:
    """Causal, and within the sliding window when there is one: k <= q (and q - k < window)."""
    allowed = key_index <= query_index
    return allowed if window is None else allowed & (query_index - key_index < window)


def padding_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
    """Both the query and the key are real tokens. Inputs [batch, q] / [batch, k]."""
    return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """Query and key belong to the same packed document (equal segment ids)."""
    return query_segments[:, None, :, None] == key_segments[:, None, None, :]


def attention_mask(
    query_segments: jax.Array,
    key_segments: jax.Array,
    *,
    causal: bool,
    window: int | None = None,
) -> jax.Array:
    """The full mask for segment ids where 0 marks padding: same segment, no padding, causal
    (within a sliding `window`, when given)."""
    mask = segment_mask(query_segments, key_segments)
    mask &= padding_mask(query_segments != 0, key_segments != 0)
    if causal:
        mask &= causal_mask(query_segments.shape[1], window)
    return mask


@struct.dataclass
class SegmentMask:
    """`attention_mask` kept as its segment ids ([batch, q] and [batch, k], 0 = padding), so
    that a fused kernel never builds the [q, k] mask; `dense()` builds it for the others.

    Without segment ids (`one_document_per_row`) every row is one document with no padding:
    the mask is causal and nothing else, which cuDNN and splash attention need not be given."""

    query_segments: jax.Array | None
    key_segments: jax.Array | None
    causal: bool = struct.field(pytree_node=False, default=False)
    length: int | None = struct.field(pytree_node=False, default=None)  # without segment ids
    window: int | None = struct.field(pytree_node=False, default=None)  # causal: sliding window

    def dense(self) -> jax.Array:
        if self.query_segments is None:
            return causal_mask(self.length, self.window)
        return attention_mask(
            self.query_segments, self.key_segments, causal=self.causal, window=self.window
        )


def one_document_per_row(length: int, window: int | None = None) -> SegmentMask:
    """The causal mask of rows of `length` tokens that are each one document, unpadded."""
    return SegmentMask(None, None, causal=True, length=length, window=window)
