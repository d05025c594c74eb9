"""Sampling and greedy decoding: prefill the prompt in one pass, then one token per step with
the key/value cache, the whole loop inside one `lax.while_loop`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import io_callback

from jaxlm.config import ModelConfig, SampleConfig
from jaxlm.decoding.cache import init_cache, soft_prompt_length, step_fn, unstack_layers
from jaxlm.decoding.sampling import next_token


def prompt_positions(segments: jax.Array) -> jax.Array:
    """Positions 0, 1, ... of the real tokens of left-padded rows [batch, length]."""
    return jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)


def prefill(cfg: ModelConfig, params, prompts, segments, context, max_new_tokens: int):
    """(logits [batch, length, vocab], cache) of left-padded prompts [batch, length] run through
    the model into a fresh cache with room for `max_new_tokens` more (and a soft prompt)."""
    batch, length = prompts.shape
    cache = init_cache(cfg, batch, soft_prompt_length(params) + length + max_new_tokens)
    positions = prompt_positions(segments)
    return step_fn(cfg)(params, cache, prompts, positions, segments, context, prefill=True)


def next_logits(cfg: ModelConfig, step, params, cache, new, positions, context, history: tuple):
    """(logits [batch, 1, vocab], cache) of the new tokens [batch, 1] at `positions` [batch, 1].

    LongRoPE (`model.rope_scaling: longrope`) rotates a pass by its long factors once a position
    reaches `rope_original_max_len`: the step whose token is the first to get there runs the
    whole sequence again into a fresh cache (transformers' Phi-3 does the same), so that every
    step's logits are those of one pass over the sequence so far. `history` = (prompts,
    segments, the new tokens so far [batch, max_new], the index of this step's) gives it."""
    ones = jnp.ones_like(new)
    if cfg.rope_scaling != "longrope":
        return step(params, cache, new, positions, ones, context)
    prompts, segments, generated, i = history

    def rerun(cache):
        kept = jnp.broadcast_to(jnp.arange(generated.shape[1]) <= i, generated.shape)
        first = positions - i  # each row's position of its first new token
        tokens = jnp.concatenate([prompts, generated], axis=1)
        rows = jnp.concatenate([segments, kept.astype(segments.dtype)], axis=1)
        where = jnp.where(kept, first + jnp.arange(generated.shape[1]), 0)
        at = jnp.concatenate([prompt_positions(segments), where], axis=1)
        fresh = jax.tree.map(jnp.zeros_like, cache)
        logits, fresh = step(params, fresh, tokens, at, rows, context, prefill=True)
        own = jax.lax.dynamic_slice_in_dim(logits, prompts.shape[1] + i, 1, axis=1)
        return own, {**fresh, "index": cache["index"] + 1}  # later slots are free again

    crossing = jnp.max(positions) == cfg.rope_original_max_len
    advance = lambda cache: step(params, cache, new, positions, ones, context)  # noqa: E731
    return jax.lax.cond(crossing, rerun, advance, cache)


def sample_tokens(
    cfg: ModelConfig,
    params,
    prompts: jax.Array,
    segments: jax.Array,
    rng: jax.Array,
    *,
    sample: SampleConfig,
    max_new_tokens: int,
    eos_id: int | tuple[int, ...],
    pad_id: int,
    context=None,
    stream: Callable[[jax.Array, jax.Array], None] | None = None,
) -> jax.Array:
    """New tokens [batch, max_new_tokens] after left-padded prompts [batch, prompt_length]
    (segments: 1 = token, 0 = padding). A row stops at `eos_id` (or any of several) and is padded
    with `pad_id`;
    `stream(step, tokens)`, if given, is called from the device loop with every new token."""
    params = unstack_layers(params)  # once, outside the loop
    logits, cache = prefill(cfg, params, prompts, segments, context, max_new_tokens)
    seen = seen_tokens(sample, logits.shape[-1], prompts, segments)
    out, _ = sample_after(
        cfg,
        params,
        logits[:, -1],
        cache,
        jnp.sum(segments, axis=1),  # real tokens per row: the next position
        rng,
        seen,
        sample=sample,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        context=context,
        stream=stream,
        prompt_rows=(prompts, segments),
    )
    return out


def seen_tokens(sample: SampleConfig, vocab: int, tokens: jax.Array, segments: jax.Array):
    """[batch, vocab] bool: the tokens each row holds, for `sample.repetition_penalty`; a
    [batch, 1] placeholder when there is no penalty to apply."""
    if sample.repetition_penalty == 1.0:
        return jnp.zeros((tokens.shape[0], 1), bool)
    seen = jnp.zeros((tokens.shape[0], vocab), bool)
    return seen.at[jnp.arange(tokens.shape[0])[:, None], tokens].max(segments > 0)


def sample_after(
    cfg: ModelConfig,
    params,
    logits: jax.Array,
    cache: dict,
    lengths: jax.Array,
    rng: jax.Array,
    seen: jax.Array,
    *,
    sample: SampleConfig,
    max_new_tokens: int,
    eos_id: int | tuple[int, ...],
    pad_id: int,
    context=None,
    stream: Callable[[jax.Array, jax.Array], None] | None = None,
    prompt_rows: tuple[jax.Array, jax.Array] | None = None,
    limit: jax.Array | int | None = None,
) -> tuple[jax.Array, dict]:
    """(new tokens [batch, max_new_tokens], cache) sampled after a prefill: its last logits
    [batch, vocab] and cache, each row's length (the position of its next token) and
    `seen_tokens`. Every sampled token goes into the cache; at most `limit` (default
    `max_new_tokens`) are sampled. LongRoPE needs the prefilled `prompt_rows` (tokens,
    segments) to run the sequence again (`next_logits`)."""
    batch = logits.shape[0]
    step = step_fn(cfg)
    rows = jnp.arange(batch)
    limit = max_new_tokens if limit is None else limit
    track_seen = sample.repetition_penalty != 1.0  # otherwise `seen` is never read

    def keep_going(state):
        i, _, _, _, done, _ = state
        return (i < limit) & ~jnp.all(done)

    def body(state):
        i, out, logits, cache, done, seen = state
        token = next_token(logits, seen, jax.random.fold_in(rng, i), sample)
        token = jnp.where(done, pad_id, token).astype(jnp.int32)
        if stream is not None:
            io_callback(stream, None, i, token, ordered=True)
        out = out.at[:, i].set(token)
        if track_seen:
            seen = seen.at[rows, token].set(True)
        done = done | jnp.isin(token, jnp.asarray(eos_id))
        history = None if prompt_rows is None else (*prompt_rows, out, i)
        logits, cache = next_logits(
            cfg, step, params, cache, token[:, None], (lengths + i)[:, None], context, history
        )
        return i + 1, out, logits[:, -1], cache, done, seen

    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros((batch,), bool)
    state = (jnp.zeros((), jnp.int32), out, logits, cache, done, seen)
    _, out, _, cache, _, _ = jax.lax.while_loop(keep_going, body, state)
    return out, cache
