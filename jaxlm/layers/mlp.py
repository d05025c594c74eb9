"""The position-wise feed-forward network of a block, and the initializer of projections back
into the residual stream."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax

from jaxlm.config import ModelConfig
from jaxlm.layers.activations import ACTIVATIONS
from jaxlm.layers.linear import DenseGeneral


def output_init(cfg: ModelConfig) -> nn.initializers.Initializer:
    """Init of projections back into the residual stream; GPT-2 scales it by 1/sqrt(2 * layers)."""
    std = cfg.init_std
    if cfg.scaled_residual_init:
        std /= math.sqrt(2 * cfg.num_layers)
    return nn.initializers.normal(std)


def hidden_activations(cfg: ModelConfig, project_in) -> jax.Array:
    """activation(project_in("wi")), or with `mlp_type: gated` activation(project_in("wi_gate"))
    * project_in("wi")."""
    activation = ACTIVATIONS[cfg.activation]
    if cfg.mlp_type == "gated":
        return activation(project_in("wi_gate")) * project_in("wi")
    return activation(project_in("wi"))


class Mlp(nn.Module):
    """Position-wise feed-forward network: Dense(mlp_dim) -> activation -> Dense(embed).

    Gated (`mlp_type: gated`, SwiGLU with silu): activation(x W_gate) * (x W_i), then Dense(embed).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        dense = functools.partial(
            DenseGeneral,
            use_bias=cfg.use_bias,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
        )

        def project_in(name: str) -> jax.Array:
            return dense(
                (cfg.mlp_dim,),
                ("embed", "mlp"),
                kernel_init=nn.initializers.normal(cfg.init_std),
                name=name,
            )(x)

        hidden = nn.with_logical_constraint(
            hidden_activations(cfg, project_in),
            ("activation_batch", "activation_length", "activation_mlp"),
        )
        return dense((x.shape[-1],), ("mlp", "embed"), kernel_init=output_init(cfg), name="wo")(
            hidden
        )
