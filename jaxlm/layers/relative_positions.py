"""T5's relative position bias (Raffel et al. 2020): instead of position embeddings, every
self-attention score gets a learned per-head bias that depends only on the bucketed distance
from the query to the key; one table serves every layer of a stack."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def relative_position_buckets(
    relative: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """The bucket of each key position minus query position in `relative` (integers).

    Bidirectional (encoders): half the buckets for keys after the query. Causal (decoders): keys
    after the query share bucket 0 with the query itself. Of a direction's buckets, the first
    half are exact distances 0, 1, ...; the rest cover distances up to `max_distance`
    logarithmically, and every farther distance falls in the last."""
    buckets = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += jnp.where(relative > 0, num_buckets, 0)
        distance = jnp.abs(relative)
    else:
        distance = jnp.maximum(-relative, 0)
    exact = num_buckets // 2
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / jnp.log(
        max_distance / exact
    )
    logarithmic = exact + (scaled * (num_buckets - exact)).astype(relative.dtype)
    logarithmic = jnp.minimum(logarithmic, num_buckets - 1)
    return buckets + jnp.where(distance < exact, distance, logarithmic)


class RelativePositionBias(nn.Module):
    """Float32 biases [batch, heads, q, k] of queries at `query_positions` [batch, q] over keys
    at `key_positions` [batch, k], from a learned table [num_buckets, heads]. Positions of one
    row ([1, q], [1, k]) give one bias for every row of a batch."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    init_std: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.init_std), ("relative_buckets", "heads")
            ),
            (self.num_buckets, self.num_heads),
            self.param_dtype,
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [batch, q, k]
        buckets = relative_position_buckets(
            relative.astype(jnp.int32),
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=0)  # [batch, q, k, heads]
        rows = "activation_batch" if bias.shape[0] > 1 else None  # one row serves every row
        return nn.with_logical_constraint(
            jnp.moveaxis(bias, -1, 1), (rows, "activation_heads", "activation_length", None)
        )
