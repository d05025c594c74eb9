"""Next-token choice from logits: repetition penalty, temperature, top-k, top-p, greedy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import SampleConfig

NEG_INF = jnp.finfo(jnp.float32).min


def penalize_repetition(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """CTRL (Keskar et al. 2019): seen tokens' positive logits / penalty, negative ones * penalty.

    logits, seen: [batch, vocab].
    """
    if penalty == 1.0:
        return logits
    penalized = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalized, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits of each row (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus)."""
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # the most likely token is always kept
    sorted_logits = jnp.where(mass_before < p, sorted_logits, NEG_INF)
    ranks = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(sorted_logits, ranks, axis=-1)


def next_token(
    logits: jax.Array, seen: jax.Array, rng: jax.Array, sample: SampleConfig
) -> jax.Array:
    """One token per row from logits [batch, vocab]; argmax when sample.temperature is 0."""
    logits = penalize_repetition(logits.astype(jnp.float32), seen, sample.repetition_penalty)
    if sample.temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = top_p_filter(top_k_filter(logits / sample.temperature, sample.top_k), sample.top_p)
    return jax.random.categorical(rng, logits, axis=-1)
