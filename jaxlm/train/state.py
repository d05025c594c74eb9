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


def _is_boxed(params) -> bool:
    """Whether `params` carry logical axis names (nn.LogicallyPartitioned leaves)."""
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return any(isinstance(x, nn.LogicallyPartitioned) for x in leaves)


def _boxed_state(
    cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array, params=None
) -> TrainState:
    """A fresh state whose parameters (and matching optimizer moments) keep their axis names;
    boxed `params` replace the model's random init."""
    params = params if _is_boxed(params) else init_params(cfg, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, params=None):
    """(abstract unboxed state, NamedSharding tree) for a state laid out on `mesh`. Parameters
    boxed with logical axis names (as `jaxlm.finetune` makes them, with adapters added) bring
    their own structure and layout; without them, or unboxed, the model's are used."""
    boxed = jax.eval_shape(lambda: _boxed_state(cfg, tx, jax.random.key(0), params))
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
    fresh optimizer state (boxed `params`: see `state_shardings`). Returns (state, shardings)."""
    _, shardings = state_shardings(cfg, tx, mesh, params)
    params = jax.device_put(nn.unbox(params), shardings.params)
    create = jax.jit(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
        out_shardings=shardings,
    )
    return create(params), shardings
