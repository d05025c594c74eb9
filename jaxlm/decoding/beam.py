"""Beam search with a key/value cache, length penalty and early stopping, in one while loop.

Keeps `num_beams` alive hypotheses and `num_beams` finished ones per example. Each step expands
the alive beams, takes the 2 * num_beams best continuations, moves those that end in EOS to the
finished set (scored log-probability / length ** length_penalty) and keeps the best others alive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig, SampleConfig
from jaxlm.decoding.cache import map_batch, step_fn, unstack_layers
from jaxlm.decoding.loop import next_logits, prefill

NEG_INF = -1.0e9


def _gather_beams(x: jax.Array, beam_index: jax.Array) -> jax.Array:
    """x: [batch, beams, ...]; beam_index: [batch, k] -> [batch, k, ...]."""
    return jnp.take_along_axis(x, beam_index.reshape(*beam_index.shape, *([1] * (x.ndim - 2))), 1)


def beam_search(
    cfg: ModelConfig,
    params,
    prompts: jax.Array,
    segments: jax.Array,
    *,
    sample: SampleConfig,
    max_new_tokens: int,
    eos_id: int | tuple[int, ...],
    pad_id: int,
    context=None,
) -> tuple[jax.Array, jax.Array]:
    """Best hypotheses after left-padded prompts [batch, prompt_length].

    Returns (tokens [batch, num_beams, max_new_tokens], scores [batch, num_beams]), best first;
    tokens after a hypothesis's EOS are `pad_id`.
    """
    k, alpha = sample.num_beams, sample.length_penalty
    batch = prompts.shape[0]
    params = unstack_layers(params)  # once, outside the loop
    step = step_fn(cfg)
    logits, cache = prefill(cfg, params, prompts, segments, context, max_new_tokens)
    # Every beam starts as the same prompt: repeat the cache and the context k times.
    repeat = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731
    cache = map_batch(cache, repeat)
    if context is not None:
        context = jax.tree.map(repeat, context)
    lengths = jnp.repeat(jnp.sum(segments, axis=1), k)
    beam_prompts, beam_segments = repeat(prompts), repeat(segments)
    logits = jnp.repeat(logits[:, -1], k, axis=0)  # [batch * k, vocab]
    vocab = logits.shape[-1]

    def penalty(length):
        return jnp.asarray(length, jnp.float32) ** alpha

    def keep_going(state):
        i, _, alive_logp, _, _, _, finished_scores = state
        if sample.early_stopping:
            done = jnp.all(finished_scores > NEG_INF / 2, axis=1)
        else:  # stop when the best alive beam cannot beat the worst finished one any more
            best_length = max_new_tokens if alpha > 0 else i
            best_alive = alive_logp[:, 0] / penalty(jnp.maximum(best_length, 1))
            done = best_alive < jnp.min(finished_scores, axis=1)
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, alive, alive_logp, logits, cache, finished, finished_scores = state
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
        candidates = (alive_logp[..., None] + logp).reshape(batch, k * vocab)
        cand_logp, flat = jax.lax.top_k(candidates, 2 * k)  # [batch, 2k]
        cand_beam, cand_token = flat // vocab, flat % vocab
        cand_seqs = _gather_beams(alive, cand_beam).at[:, :, i].set(cand_token)
        is_eos = jnp.isin(cand_token, jnp.asarray(eos_id))

        # Finished: the old ones and the candidates that just ended, best k by score.
        new_scores = jnp.where(is_eos, cand_logp / penalty(i + 1), NEG_INF)
        all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        all_seqs = jnp.concatenate([finished, cand_seqs], axis=1)
        finished_scores, keep = jax.lax.top_k(all_scores, k)
        finished = _gather_beams(all_seqs, keep)

        # Alive: the best k candidates that did not end.
        alive_logp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, cand_logp), k)
        alive = _gather_beams(cand_seqs, keep)
        parent = _gather_beams(cand_beam, keep)  # [batch, k] beam each survivor extends
        rows = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
        cache = map_batch(cache, lambda x: jnp.take(x, rows, axis=0))
        tokens = alive[:, :, i].reshape(-1, 1)
        history = (beam_prompts, beam_segments, alive.reshape(batch * k, -1), i)
        logits, cache = next_logits(
            cfg, step, params, cache, tokens, (lengths + i)[:, None], context, history
        )
        return i + 1, alive, alive_logp, logits[:, -1], cache, finished, finished_scores

    alive = jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32)
    alive_logp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
    finished_scores = jnp.full((batch, k), NEG_INF)
    state = (jnp.zeros((), jnp.int32), alive, alive_logp, logits, cache, alive, finished_scores)
    i, alive, alive_logp, _, _, finished, finished_scores = jax.lax.while_loop(
        keep_going, body, state
    )
    # Examples with fewer than k finished hypotheses are completed from the alive beams.
    all_scores = jnp.concatenate([finished_scores, alive_logp / penalty(i)], axis=1)
    scores, keep = jax.lax.top_k(all_scores, k)
    return _gather_beams(jnp.concatenate([finished, alive], axis=1), keep), scores
