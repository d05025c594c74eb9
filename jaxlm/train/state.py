"""Train state: step, parameters and optimizer state, created directly in its sharded layout."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from jaxlm.config import ModelConfig
from jaxlm.models import init_params
from jaxlm.parallel import logical_shardings


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def _boxed_state(cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A fresh state whose parameters (and matching optimizer moments) keep their axis names."""
    params = init_params(cfg, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh):
    """(abstract unboxed state, NamedSharding tree) for a state laid out on `mesh`."""
    boxed = jax.eval_shape(lambda: _boxed_state(cfg, tx, jax.random.key(0)))
    return nn.unbox(boxed), logical_shardings(boxed, mesh)


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, seed: int):
    """A fresh state created on the mesh in its final sharding (never whole on one device).

    Returns (state, shardings). The values do not depend on the mesh shape.
    """
    _, shardings = state_shardings(cfg, tx, mesh)
    create = jax.jit(lambda rng: nn.unbox(_boxed_state(cfg, tx, rng)), out_shardings=shardings)
    return create(jax.random.key(seed)), shardings


def state_from_params(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, params):
    """A step-0 state holding `params` (e.g. pretrained weights, laid out on the mesh) with a
    fresh optimizer state. Returns (state, shardings)."""
    _, shardings = state_shardings(cfg, tx, mesh)
    params = jax.device_put(params, shardings.params)
    create = jax.jit(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
        out_shardings=shardings,
    )
    return create(params), shardings
