"""Token embeddings and positional encodings: sinusoidal, learned and rotary."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.layers.matmul import einsum


def sinusoidal_table(
    num_positions: int, features: int, max_timescale: float = 10_000.0, halves: bool = False
) -> np.ndarray:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / T^(2i/d)), PE[p, 2i+1] = cos(p / T^(2i/d));
    with `halves`, the same sines first and the cosines after them (Marian, tensor2tensor)."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    rates = max_timescale ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    angles = positions * rates[None, :]
    sines, cosines = np.sin(angles), np.cos(angles[:, : features // 2])
    if halves:
        return np.concatenate([sines, cosines], axis=1).astype(np.float32)
    table = np.zeros((num_positions, features), dtype=np.float64)
    table[:, 0::2], table[:, 1::2] = sines, cosines
    return table.astype(np.float32)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings, looked up at (possibly per-row) positions."""

    num_positions: int
    features: int
    dtype: jnp.dtype = jnp.float32
    halves: bool = False  # see `sinusoidal_table`

    def __call__(self, positions: jax.Array) -> jax.Array:
        # positions: [batch, length] -> [batch, length, features]
        table = sinusoidal_table(self.num_positions, self.features, halves=self.halves)
        table = jnp.asarray(table, self.dtype)
        return jnp.take(table, positions, axis=0)


class LearnedPositions(nn.Module):
    """A trained table of position embeddings (GPT-2, BERT)."""

    num_positions: int
    features: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.init_std), ("position", "embed")
            ),
            (self.num_positions, self.features),
            self.param_dtype,
        )
        return jnp.take(gathered_table(table, "position", self.dtype), positions, axis=0)


def gathered_table(table: jax.Array, rows_axis: str, dtype) -> jax.Array:
    """A lookup table with its `embed` dimension gathered (FSDP shards it) before the lookup,
    so that the looked-up rows come out sharded like the batch of indices instead."""
    return nn.with_logical_constraint(jnp.asarray(table, dtype), (rows_axis, None))


class TokenEmbedding(nn.Module):
    """Token embedding table of `num_embeddings` rows (the vocabulary padded for speed).

    `attend` computes output logits with the same table (tied input/output embeddings).
    """

    num_embeddings: int
    features: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        # tokens: [batch, length] -> [batch, length, features]
        return jnp.take(gathered_table(self.embedding, "vocab", self.dtype), tokens, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Float32 logits [batch, length, num_embeddings] of x [batch, length, features],
        accumulated in float32 and never rounded to the compute dtype."""
        table = jnp.asarray(self.embedding, self.dtype)
        return einsum("bld,vd->blv", x, table, preferred_element_type=jnp.float32)


def rotary_frequencies(
    head_dim: int,
    base: float = 10_000.0,
    scaling: str = "none",
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_len: int = 8192,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    divisors: Sequence[float] = (),
) -> np.ndarray:
    """The head_dim / 2 rotation frequencies of rotary embedding, float32 computed in float64:
    base^(-2i / head_dim), optionally rescaled for longer contexts.

    'linear' divides them all by `factor`. 'llama3' (Llama 3.1) divides those whose wavelength
    2π / frequency exceeds original_max_len / low_freq_factor, keeps those below original_max_len
    / high_freq_factor, and blends the two between, in proportion to original_max_len /
    wavelength going from low_freq_factor to high_freq_factor. 'yarn' (Peng et al. 2023) keeps
    the frequencies up to the one that turns beta_fast times over original_max_len positions,
    divides those from the one that turns beta_slow times, and blends linearly over the indices
    between (rounded outwards, as transformers does); its queries and keys are also scaled
    (`yarn_attention_factor`). 'longrope' divides each frequency by its own of `divisors`."""
    half = head_dim // 2
    frequencies = base ** (-np.arange(half, dtype=np.float64) / half)
    if scaling == "linear":
        frequencies = frequencies / factor
    elif scaling == "llama3":
        wavelengths = 2 * np.pi / frequencies
        share = (original_max_len / wavelengths - low_freq_factor) / (
            high_freq_factor - low_freq_factor
        )
        kept = np.clip(share, 0.0, 1.0)  # 1 for short wavelengths, 0 for long ones
        frequencies = kept * frequencies + (1 - kept) * frequencies / factor
    elif scaling == "yarn":

        def index_turning(rotations: float) -> float:  # the i whose frequency turns that often
            return (
                head_dim * np.log(original_max_len / (rotations * 2 * np.pi)) / (2 * np.log(base))
            )

        low = max(np.floor(index_turning(beta_fast)), 0)
        high = min(np.ceil(index_turning(beta_slow)), head_dim - 1)
        divided = np.clip((np.arange(half) - low) / max(high - low, 1e-3), 0.0, 1.0)
        frequencies = divided * frequencies / factor + (1 - divided) * frequencies
    elif scaling == "longrope":
        frequencies = frequencies / np.asarray(divisors, np.float64)
    elif scaling != "none":
        raise ValueError(f"unknown rotary scaling {scaling!r}")
    return frequencies.astype(np.float32)


def yarn_attention_factor(factor: float) -> float:
    """YaRN's default scale of queries and keys: 0.1 ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def longrope_attention_factor(factor: float, original_max_len: int) -> float:
    """LongRoPE's default scale of queries and keys: sqrt(1 + ln(factor) / ln(original_max_len))
    (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original_max_len))


def apply_rotary(
    x: jax.Array,
    positions: jax.Array,
    base: float = 10_000.0,
    frequencies: np.ndarray | None = None,
    amplitude: float = 1.0,
) -> jax.Array:
    """Rotary position embedding (Su et al. 2021), rotating pairs (i, i + r/2) of each head's
    first r features by position times frequency i (`frequencies`, r / 2 of them, default
    `rotary_frequencies(d, base)`: all d features), and scaling them by `amplitude` (YaRN's
    attention factor). Features from r on pass unchanged (partial rotary: GPT-NeoX, Phi-2).

    x: [batch, length, heads, head_dim]; positions: [batch, length].
    """
    if frequencies is None:
        frequencies = rotary_frequencies(x.shape[-1], base)
    half = len(frequencies)
    angles = positions[..., None].astype(jnp.float32) * frequencies  # [batch, length, half]
    sin, cos = (amplitude * f(angles)[:, :, None, :] for f in (jnp.sin, jnp.cos))
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half : 2 * half].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., 2 * half :]], axis=-1)
