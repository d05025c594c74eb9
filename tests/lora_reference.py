"""A LoRA model computed without merging the factors into the kernels (a test reference)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.finetune.patterns import flat, nested
from jaxlm.layers.linear import DenseGeneral
from jaxlm.models import build_model


def unmerged_logits(cfg: ModelConfig, params: dict, tokens, scale: float) -> jax.Array:
    """The model's logits with every targeted projection adding scale * (x A) B to its output
    (the factors sliced per layer like its kernel)."""
    with_factors = {k: v for k, v in params.items() if k != "lora"}
    leaves = flat(with_factors)
    for path, factor in flat(params["lora"]).items():
        module, name = path.rsplit("/", 1)
        leaves[f"{module}/lora_{name}"] = factor
    inner = nested(leaves)

    def add_update(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        module = context.module
        if not isinstance(module, DenseGeneral) or context.method_name != "__call__":
            return y
        if not module.has_variable("params", "lora_a"):
            return y
        a, b = module.get_variable("params", "lora_a"), module.get_variable("params", "lora_b")
        x = args[0]
        n_in = a.ndim - 1
        h = jnp.tensordot(x, a, axes=(list(range(x.ndim - n_in, x.ndim)), list(range(n_in))))
        return y + scale * jnp.tensordot(h, b, axes=([h.ndim - 1], [0]))

    @jax.jit
    def logits(params):
        with nn.intercept_methods(add_update):
            return build_model(cfg).apply({"params": params}, tokens)

    return logits(inner)
