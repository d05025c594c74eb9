"""Prompt tuning (Lester et al. 2021): a trained soft prompt before every input, base frozen.

The models read a `prompt` parameter [prompt_length, embed] when it is present: it joins the
embedded inputs in front of the tokens, every real token attends to it, and it is removed again
before the heads, so a BERT classifier still reads [CLS] (see `jaxlm.models.common`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

PROMPT = "prompt"


def init_prompt(
    token_embedding: jax.Array, vocab_size: int, length: int, rng: jax.Array
) -> nn.LogicallyPartitioned:
    """A boxed prompt of `length` rows of the token embedding table drawn at random from the
    real vocabulary (the initialisation Lester et al. found best)."""
    ids = jax.random.randint(rng, (length,), 0, vocab_size)
    return nn.LogicallyPartitioned(jnp.take(token_embedding, ids, axis=0), (None, "embed"))
