"""The generating families (GPT, encoder-decoder) as steps over a preallocated key/value cache.

A cache is the model's "cache" collection: per layer (stacked on a leading `layers` axis) the
keys and values of every filled slot, plus the next free slot and each slot's segment id.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.models import build_model

# (params, cache, tokens, positions, segments, context) -> (logits [batch, length, vocab], cache)
StepFn = Callable[..., tuple[jax.Array, dict]]


def step_fn(cfg: ModelConfig) -> StepFn:
    """Run new tokens [batch, length] through the model, appending them to the cache.

    `context` is None for GPT and `(encoded, source_segments)` for the encoder-decoder.
    """
    model = build_model(cfg)

    def step(params, cache, tokens, positions, segments, context):
        variables = {"params": params, "cache": cache}
        if cfg.family == "seq2seq":
            encoded, source_segments = context
            logits, updated = model.apply(
                variables,
                encoded,
                tokens,
                source_segments,
                segments,
                positions,
                use_cache=True,
                mutable=["cache"],
                method="decode",
            )
        else:
            logits, updated = model.apply(
                variables, tokens, positions, segments, use_cache=True, mutable=["cache"]
            )
        return logits, updated["cache"]

    return step


def init_cache(cfg: ModelConfig, batch: int, length: int, context=None) -> dict:
    """An empty cache for `batch` sequences of up to `length` tokens."""
    model = build_model(cfg)
    tokens = jnp.zeros((batch, length), jnp.int32)

    def shapes():
        if cfg.family == "seq2seq":
            encoded, source_segments = context
            return model.init(
                jax.random.key(0),
                encoded,
                tokens,
                source_segments,
                use_cache=True,
                method="decode",
            )["cache"]
        return model.init(jax.random.key(0), tokens, use_cache=True)["cache"]

    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes))


def encode(cfg: ModelConfig, params, source: jax.Array, source_segments: jax.Array):
    """Encoder-decoder: the context every decoding step attends to."""
    encoded = build_model(cfg).apply({"params": params}, source, source_segments, method="encode")
    return encoded, source_segments


def map_batch(cache: dict, fn: Callable[[jax.Array, int], jax.Array]) -> dict:
    """Apply `fn(leaf, batch_axis)` to every batched cache entry (layer caches are stacked)."""

    def apply(path, leaf):
        if leaf.ndim == 0:
            return leaf
        stacked = any(getattr(k, "key", None) == "layers" for k in path)
        return fn(leaf, 1 if stacked else 0)

    return jax.tree_util.tree_map_with_path(apply, cache)
