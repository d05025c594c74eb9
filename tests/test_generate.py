"""Sampling against a naive reference: a growing sequence re-run through the model each step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tiny import TINY_MODEL

from jaxlm.config import SampleConfig, load_config
from jaxlm.generate import generate, sample_logits
from jaxlm.models import build_model, init_params

CFG = load_config(
    None,
    TINY_MODEL
    + [
        "model.vocab_size=50",
        "model.max_len=32",
        "data.seq_len=32",
        "model.init_std=0.5",  # large weights: peaked, prompt-dependent predictions
    ],
).model
PARAMS = nn.unbox(init_params(CFG, jax.random.key(3)))


FORWARD = jax.jit(lambda tokens: build_model(CFG).apply({"params": PARAMS}, tokens))


def _naive_greedy(prompt, steps, eos_id):
    tokens = list(prompt)
    for _ in range(steps):
        logits = FORWARD(jnp.asarray([tokens]))[0, -1]
        tokens.append(int(jnp.argmax(logits)))
        if tokens[-1] == eos_id:
            break
    return tokens[len(prompt) :]


def test_greedy_matches_naive_loop_for_prompts_of_different_lengths():
    prompts = [[2, 7, 9, 11, 4], [2, 30], [2, 5, 5, 8]]
    sample = SampleConfig(max_new_tokens=10, temperature=0.0)
    got = generate(CFG, PARAMS, prompts, sample, eos_id=-1)
    assert got == [_naive_greedy(p, 10, eos_id=-1) for p in prompts]


def test_generation_stops_at_eos_per_row():
    prompts = [[2, 7, 9], [2, 30, 1]]
    reference = [_naive_greedy(p, 10, eos_id=-1) for p in prompts]
    eos = reference[0][3]  # the 4th greedy token of row 0 acts as EOS
    got = generate(
        CFG, PARAMS, prompts, SampleConfig(max_new_tokens=10, temperature=0.0), eos_id=eos
    )
    assert got == [_naive_greedy(p, 10, eos_id=eos) for p in prompts]
    assert got[0][-1] == eos and len(got[0]) == reference[0].index(eos) + 1


def test_sampling_is_reproducible_with_the_same_key():
    prompts = [[2, 7, 9]]
    sample = SampleConfig(max_new_tokens=12, temperature=1.0, seed=5)
    first = generate(CFG, PARAMS, prompts, sample, eos_id=-1)
    assert first == generate(CFG, PARAMS, prompts, sample, eos_id=-1)
    other = generate(
        CFG, PARAMS, prompts, SampleConfig(max_new_tokens=12, temperature=1.0, seed=6), eos_id=-1
    )
    assert other != first


def test_top_k_only_emits_the_k_most_likely_tokens():
    logits = jax.random.normal(jax.random.key(0), (4, 50))
    allowed = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    for seed in range(50):
        tokens = np.asarray(sample_logits(logits, jax.random.key(seed), temperature=1.5, top_k=5))
        assert all(tokens[row] in allowed[row] for row in range(4))


def test_temperature_one_samples_follow_softmax():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 20_000)
    draws = jax.vmap(lambda k: sample_logits(logits, k, 1.0, 0))(keys)[:, 0]
    freq = np.bincount(np.asarray(draws), minlength=4) / len(keys)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
