"""The three model families, built from a `ModelConfig`."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.models.bert import Bert
from jaxlm.models.gpt import GPT
from jaxlm.models.seq2seq import EncoderDecoder

FAMILIES = {"gpt": GPT, "bert": Bert, "seq2seq": EncoderDecoder}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The Flax module for `cfg.family`."""
    return FAMILIES[cfg.family](cfg)


def example_inputs(cfg: ModelConfig, batch: int = 1, length: int | None = None) -> tuple:
    """Positional arguments that `model.init` needs to trace the model once."""
    tokens = jnp.zeros((batch, length or min(cfg.max_len, 8)), jnp.int32)
    return (tokens, tokens) if cfg.family == "seq2seq" else (tokens,)


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Freshly initialised parameters, still boxed with their logical axis names (compiled
    once per config: op-by-op initialisation is several times slower)."""
    return build_model(cfg).init(rng, *example_inputs(cfg))["params"]


__all__ = [
    "GPT",
    "Bert",
    "EncoderDecoder",
    "FAMILIES",
    "build_model",
    "example_inputs",
    "init_params",
]
