"""Prefix tuning (Li & Liang 2021): trained keys and values in every self-attention layer,
which every query may attend to besides the inputs'; base frozen.

The stack's blocks read `prefix_key` and `prefix_value` [layers, prefix_length, kv_heads,
head_dim] from their parameters (`<stack>/layers/prefix_key`) when present. They are trained
directly, without the reparametrising MLP of the paper.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxlm.config import ModelConfig

STACKS = {"gpt": "decoder", "bert": "encoder"}  # the self-attention stack of each family
AXES = ("layers", None, "kv_heads", "kv")


def init_prefix(cfg: ModelConfig, length: int, rng: jax.Array) -> dict:
    """`{stack: {"layers": {"prefix_key", "prefix_value"}}}`, boxed, drawn from N(0, init_std)."""
    shape = (cfg.num_layers, length, cfg.num_kv_heads or cfg.num_heads, cfg.resolved_head_dim)
    keys = jax.random.split(rng)
    prefix = {
        f"prefix_{name}": nn.LogicallyPartitioned(
            cfg.init_std * jax.random.normal(key, shape, cfg.weight_dtype), AXES
        )
        for name, key in zip(("key", "value"), keys, strict=True)
    }
    return {STACKS[cfg.family]: {"layers": prefix}}
