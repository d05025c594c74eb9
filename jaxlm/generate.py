"""Autoregressive sampling for the GPT family: greedy, temperature and top-k, in one jit.

Each step runs the model over the whole fixed-size token buffer and reads the logits at every
row's current position; causal attention makes later (not yet written) slots irrelevant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig, SampleConfig
from jaxlm.models import build_model


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Next token per row from logits [batch, vocab]: argmax when temperature is 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, jnp.finfo(logits.dtype).min, logits)
    return jax.random.categorical(rng, logits / temperature, axis=-1)


def _sampler(cfg: ModelConfig, max_new_tokens: int, sample: SampleConfig, eos_id: int, pad_id: int):
    """The jitted loop `(params, buffer, lengths, rng) -> buffer` for one set of settings."""
    model = build_model(cfg)

    def run(params, tokens, lengths, rng):
        rows = jnp.arange(tokens.shape[0])

        def step(i, carry):
            tokens, done, rng = carry
            rng, key = jax.random.split(rng)
            position = lengths + i  # where each row writes its next token
            logits = model.apply({"params": params}, tokens)[rows, position - 1]
            token = sample_logits(logits, key, sample.temperature, sample.top_k)
            token = jnp.where(done, pad_id, token).astype(tokens.dtype)
            return tokens.at[rows, position].set(token), done | (token == eos_id), rng

        done = jnp.zeros(tokens.shape[:1], bool)
        return jax.lax.fori_loop(0, max_new_tokens, step, (tokens, done, rng))[0]

    return jax.jit(run)


def generate(
    cfg: ModelConfig,
    params: dict,
    prompts: list[list[int]],
    sample: SampleConfig,
    *,
    eos_id: int,
    pad_id: int = 0,
) -> list[list[int]]:
    """Continue each prompt (token ids) by up to `sample.max_new_tokens` tokens, stopping a row
    at `eos_id`. Returns only the new tokens of each row (EOS included when produced)."""
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    longest = max(len(p) for p in prompts)
    new_tokens = min(sample.max_new_tokens, cfg.max_len - longest)
    if new_tokens <= 0:
        raise ValueError(f"prompts of {longest} tokens leave no room in max_len={cfg.max_len}")
    width = longest + new_tokens
    buffer = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        buffer[row, : len(prompt)] = prompt
    lengths = np.array([len(p) for p in prompts], np.int32)
    run = _sampler(cfg, new_tokens, sample, eos_id, pad_id)
    tokens = np.asarray(run(params, buffer, lengths, jax.random.key(sample.seed)))
    results = []
    for row, length in enumerate(lengths):
        out = tokens[row, length : length + new_tokens].tolist()
        results.append(out[: out.index(eos_id) + 1] if eos_id in out else out)
    return results


def generate_text(
    cfg: ModelConfig, params: dict, tokenizer, prompts: list[str], sample: SampleConfig
) -> list[str]:
    """Continue each text prompt; returns the generated continuations as text."""
    encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    new = generate(cfg, params, encoded, sample, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    return [tokenizer.decode(ids) for ids in new]
