"""Pieces shared by the model families: embeddings in, logits out."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.layers.embeddings import LearnedPositions, SinusoidalPositions, TokenEmbedding
from jaxlm.layers.linear import DenseGeneral
from jaxlm.layers.masks import (
    SegmentMask,
    causal_mask,
    one_document_per_row,
    padding_mask,
    within_window,
)
from jaxlm.layers.transformer import ACTIVATION_AXES


def default_positions(tokens: jax.Array) -> jax.Array:
    """0, 1, 2, ... for every row. tokens: [batch, length]."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def token_embedding(cfg: ModelConfig, name: str = "token_embed") -> TokenEmbedding:
    std = cfg.embed_dim**-0.5 if cfg.scale_embeddings else cfg.init_std
    return TokenEmbedding(
        cfg.padded_vocab_size, cfg.embed_dim, std, cfg.compute_dtype, cfg.weight_dtype, name=name
    )


def position_module(cfg: ModelConfig, name: str = "position_embed") -> nn.Module | None:
    """The absolute position embedding; None for rotary (applied inside attention)."""
    if cfg.position_embedding == "learned":
        return LearnedPositions(
            cfg.max_len, cfg.embed_dim, cfg.init_std, cfg.compute_dtype, cfg.weight_dtype, name=name
        )
    if cfg.position_embedding == "sinusoidal":
        halves = cfg.sinusoidal_layout == "halves"
        return SinusoidalPositions(cfg.max_len, cfg.embed_dim, cfg.compute_dtype, halves, name=name)
    return None


def embed_inputs(
    cfg: ModelConfig,
    embed: TokenEmbedding,
    positions_embed: nn.Module | None,
    dropout: nn.Dropout,
    tokens: jax.Array,
    positions: jax.Array,
    deterministic: bool,
) -> jax.Array:
    """Token (+ position) embeddings with dropout: [batch, length] -> [batch, length, embed]."""
    x = embed(tokens)
    if cfg.scale_embeddings:
        x = x * math.sqrt(cfg.embed_dim)
    if positions_embed is not None:
        x = x + positions_embed(positions)
    x = dropout(x, deterministic=deterministic)
    return nn.with_logical_constraint(x.astype(cfg.compute_dtype), ACTIVATION_AXES)


def soft_prompt(module: nn.Module) -> jax.Array | None:
    """The model's `prompt` parameter [prompt_length, embed] when present (prompt tuning adds it;
    `init` never does)."""
    return module.get_variable("params", "prompt")


def prepend_prompt(x: jax.Array, prompt: jax.Array) -> jax.Array:
    """The prompt before every row: [batch, length, embed] -> [batch, prompt + length, embed]."""
    rows = jnp.broadcast_to(prompt.astype(x.dtype), (x.shape[0], *prompt.shape))
    return jnp.concatenate([rows, x], axis=1)


def prompt_attention(
    mask, positions: jax.Array, segment_ids: jax.Array, prompt_length: int, *, causal: bool
):
    """(mask, positions) over prompt + length positions once a soft prompt precedes the inputs.

    The prompt is shared by every segment of a row: each real token attends to all of it and
    padding to none of it, while the prompt attends only to itself (causally in a decoder), so
    what it contributes does not depend on the row. Its positions, read only by rotary
    embeddings, are -prompt_length..-1. mask: [batch, 1, length, length] or a `SegmentMask`.
    """
    if isinstance(mask, SegmentMask):
        mask = mask.dense()
    (batch, length), size = segment_ids.shape, prompt_length
    within = causal_mask(size) if causal else jnp.ones((1, 1, size, size), bool)
    prompt_rows = jnp.zeros((batch, 1, size, size + length), bool).at[..., :size].set(within)
    sees_prompt = jnp.broadcast_to((segment_ids != 0)[:, None, :, None], (batch, 1, length, size))
    token_rows = jnp.concatenate(
        [sees_prompt, jnp.broadcast_to(mask, (batch, 1, length, length))], axis=-1
    )
    prompt_positions = jnp.broadcast_to(jnp.arange(size) - size, (batch, size))
    return (
        jnp.concatenate([prompt_rows, token_rows], axis=2),
        jnp.concatenate([prompt_positions, positions], axis=1),
    )


def prompt_in_cache(positions: jax.Array, segment_ids: jax.Array, prompt_length: int):
    """(positions, segment_ids) [batch, prompt + length] of a soft prompt written into a key/value
    cache ahead of the inputs. Its slots are real (segment 1) and first, so the causal mask over
    the cache lets every real token attend to all of it and the prompt only to itself, as
    `prompt_attention` does for a row of one segment; its positions are -prompt_length..-1."""
    batch = segment_ids.shape[0]
    prompt_positions = jnp.broadcast_to(
        jnp.arange(prompt_length) - prompt_length, (batch, prompt_length)
    )
    return (
        jnp.concatenate([prompt_positions.astype(positions.dtype), positions], axis=1),
        jnp.concatenate([jnp.ones((batch, prompt_length), segment_ids.dtype), segment_ids], axis=1),
    )


def output_head(cfg: ModelConfig, name: str = "lm_head") -> DenseGeneral:
    """The output projection of a model whose head is not tied to its token embedding."""
    return DenseGeneral(
        (cfg.padded_vocab_size,),
        ("embed", "vocab"),
        use_bias=False,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        kernel_init=nn.initializers.normal(cfg.init_std),
        output_dtype=jnp.float32,
        name=name,
    )


def output_logits(
    cfg: ModelConfig,
    embed: TokenEmbedding,
    x: jax.Array,
    bias: OutputBias | None = None,
    head: DenseGeneral | None = None,
):
    """Float32 logits over the padded vocabulary (plus `bias`, then capped to c tanh(logits / c)
    by `model.logit_softcap` c); padding rows can never be predicted. An untied model projects
    with `head` (`output_head`; built here when None, in a compact module)."""
    if cfg.tie_embeddings:
        logits = embed.attend(x)
    else:
        logits = (head or output_head(cfg))(x)
    logits = nn.with_logical_constraint(
        logits.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab")
    )
    if bias is not None:
        logits = bias(logits)
    if cfg.logit_softcap is not None:
        logits = jnp.tanh(logits / cfg.logit_softcap) * cfg.logit_softcap
    return mask_vocab_padding(logits, cfg.vocab_size)


class OutputBias(nn.Module):
    """A learned bias on the logits over the padded vocabulary (`model.output_bias`)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, logits: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",))
        bias = self.param("bias", init, (self.cfg.padded_vocab_size,), self.cfg.weight_dtype)
        return logits + jnp.asarray(bias, jnp.float32)


def mask_vocab_padding(logits: jax.Array, vocab_size: int) -> jax.Array:
    """Set logits of the rows added only to pad the vocabulary to a large negative value."""
    if logits.shape[-1] == vocab_size:
        return logits
    real = jnp.arange(logits.shape[-1]) < vocab_size
    return jnp.where(real, logits, jnp.finfo(logits.dtype).min)


def empty_cache(cfg: ModelConfig, num_layers: int, batch: int, length: int) -> dict:
    """A key/value cache for `batch` sequences of up to `length` tokens.

    key, value: a tuple of one [batch, kv_heads, length, head_dim] array per layer; segments:
    [batch, length] (the segment id of every filled slot, 0 = padding or empty); index: the next
    free slot.
    """
    shape = (batch, cfg.num_kv_heads or cfg.num_heads, length, cfg.resolved_head_dim)
    return {
        "key": tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(num_layers)),
        "value": tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(num_layers)),
        "segments": jnp.zeros((batch, length), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def cached_positions(cache: dict) -> jax.Array:
    """[batch, cache_length]: the position of each filled slot's token, from 0 in each row (the
    cached tokens fill consecutive slots, left-padded rows after their padding)."""
    return jnp.cumsum(cache["segments"] != 0, axis=1) - 1


def cached_self_attention_mask(cache: dict, segment_ids: jax.Array, window: int | None = None):
    """Append new tokens' segment_ids [batch, length] to the cache's slots.

    Returns the causal mask (within a sliding `window`, when given: a row's tokens fill
    consecutive slots) of the new tokens over the cache [batch, 1, length, cache_length], the
    slot where they go, and the cache with its segments and next free slot updated.
    """
    start = cache["index"]
    filled = jax.lax.dynamic_update_slice(
        cache["segments"], segment_ids.astype(jnp.int32), (0, start)
    )
    query_slots = start + jnp.arange(segment_ids.shape[1])
    causal = within_window(query_slots[:, None], jnp.arange(filled.shape[1])[None, :], window)
    mask = causal[None, None] & padding_mask(segment_ids != 0, filled != 0)
    return mask, start, {**cache, "segments": filled, "index": start + segment_ids.shape[1]}


def causal_self_attention(
    tokens: jax.Array,
    segment_ids: jax.Array | None,
    cache: dict | None,
    window: int | None = None,
    full_too: bool = False,
):
    """What a causal decoder stack needs: (mask, extra stack arguments, updated cache).

    Without a cache the mask covers the inputs (rows of one document each when `segment_ids`
    is None); with one (and segment ids), the new tokens attend over the cache and the stack
    gets the cache and the slot to write at. A sliding `window` limits each token to the last
    `window` tokens, itself included; with `full_too` the stack also gets the mask without the
    window, as `full_mask`, for its layers of full attention.
    """
    if cache is None:
        if segment_ids is None:
            mask = one_document_per_row(tokens.shape[1], window)
        else:
            mask = SegmentMask(segment_ids, segment_ids, causal=True, window=window)
        extras = {"full_mask": dataclasses.replace(mask, window=None)} if full_too else {}
        return mask, extras, None
    mask, start, updated = cached_self_attention_mask(cache, segment_ids, window)
    extras = {"kv_cache": (updated["key"], updated["value"]), "decode_index": start}
    if full_too:
        extras["full_mask"] = cached_self_attention_mask(cache, segment_ids)[0]
    return mask, extras, updated


def stack_output(out, cache: dict | None):
    """(x, cache) from a stack's output: x alone, or (x, updated keys and values)."""
    if cache is None:
        return out, None
    x, (key, value) = out
    return x, {**cache, "key": key, "value": value}
