"""Next-token choice: filtered sets are respected and sampling follows softmax(logits)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import SampleConfig
from jaxlm.decoding.sampling import next_token, penalize_repetition

LOGITS = jax.random.normal(jax.random.key(0), (4, 50)) * 2.0
NO_SEEN = jnp.zeros((4, 50), bool)


def _draws(sample, n=400):
    keys = jax.random.split(jax.random.key(1), n)
    return np.asarray(jax.vmap(lambda k: next_token(LOGITS, NO_SEEN, k, sample))(keys))  # [n, 4]


def test_top_k_only_emits_the_k_most_likely_tokens():
    allowed = np.argsort(-np.asarray(LOGITS), axis=-1)[:, :5]
    draws = _draws(SampleConfig(temperature=1.5, top_k=5))
    for row in range(4):
        assert set(draws[:, row]) <= set(allowed[row])
        assert len(set(draws[:, row])) > 1


def test_top_p_only_emits_the_nucleus():
    logits = np.asarray(LOGITS, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    draws = _draws(SampleConfig(temperature=1.0, top_p=0.6))
    for row in range(4):
        order = np.argsort(-probs[row])
        before = np.cumsum(probs[row][order]) - probs[row][order]
        nucleus = set(order[before < 0.6])  # smallest prefix whose mass reaches 0.6
        assert set(draws[:, row]) <= nucleus


def test_temperature_one_samples_follow_softmax():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 20_000)
    sample = SampleConfig(temperature=1.0)
    draws = jax.vmap(lambda k: next_token(logits, jnp.zeros((1, 4), bool), k, sample))(keys)
    freq = np.bincount(np.asarray(draws)[:, 0], minlength=4) / len(keys)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_greedy_is_argmax_and_repetition_penalty_follows_ctrl():
    greedy = next_token(LOGITS, NO_SEEN, jax.random.key(0), SampleConfig(temperature=0.0))
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(LOGITS), axis=-1))
    logits = jnp.asarray([[2.0, -2.0, 1.0]])
    seen = jnp.asarray([[True, True, False]])
    np.testing.assert_allclose(penalize_repetition(logits, seen, 2.0), [[1.0, -4.0, 1.0]])
