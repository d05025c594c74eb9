"""ALiBi, attention with linear biases (Press et al. 2022, "Train Short, Test Long"): no position
embedding; each head adds -slope x distance (query position - key position) to its attention
scores, the heads' slopes a geometric sequence."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The heads' slopes [heads]: for n heads, n a power of two, 2^(-8/n), 2^(-16/n), ...,
    2^-8; for other counts, those of the largest power of two below, then every other slope of
    twice as many heads (the paper's, and BLOOM's and MPT's)."""

    def geometric(count: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / count) for i in range(count)]

    power = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(power) + geometric(2 * power)[0::2][: num_heads - power]
    return np.asarray(slopes, np.float32)


def alibi_bias(num_heads: int, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """The scores' bias [batch, heads, q, k] (float32) of queries and keys at `q_positions`
    [batch, q] and `k_positions` [batch, k]: -slope x (query position - key position)."""
    slopes = jnp.asarray(alibi_slopes(num_heads))[None, :, None, None]
    distance = q_positions[:, None, :, None] - k_positions[:, None, None, :]
    return -slopes * distance.astype(jnp.float32)


@struct.dataclass
class AlibiBias:
    """`alibi_bias` kept as its positions, so that the layers pass [batch, q] and [batch, k]
    integers along and attention computes the biases where it adds them to the scores (XLA
    fuses the two) instead of reading a [batch, heads, q, k] array built once for all."""

    q_positions: jax.Array
    k_positions: jax.Array
    num_heads: int = struct.field(pytree_node=False)

    def dense(self) -> jax.Array:
        return alibi_bias(self.num_heads, self.q_positions, self.k_positions)


def dense_bias(bias: jax.Array | AlibiBias | None) -> jax.Array | None:
    """A scores' bias as an array: an `AlibiBias` built, an array or None as it is."""
    return bias.dense() if isinstance(bias, AlibiBias) else bias
