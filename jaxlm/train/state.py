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
    return any(map(_is_box, jax.tree.leaves(params, is_leaf=_is_box)))


def _boxed_state(
    cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array, params=None
) -> TrainState:
    """A fresh state whose parameters (and matching optimizer moments) keep their axis names;
    boxed `params` replace the model's random init."""
    params = params if _is_boxed(params) else init_params(cfg, rng)
    opt_state = _unbox_reshaped(tx.init(params), params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def _unbox_reshaped(opt_state, params):
    """`opt_state` whose leaves shaped otherwise than their parameter (Adafactor's factored row
    and column statistics) drop the parameter's axis names, which do not fit them: those leaves
    are small, and replicated. Moments shaped like their parameter keep its layout."""
    shapes = {
        _dict_keys(path): box.value.shape
        for path, box in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]
        if _is_box(box)
    }

    def fit(path, leaf):
        if _is_box(leaf) and shapes.get(_dict_keys(path)) != leaf.value.shape:
            return leaf.value
        return leaf

    return jax.tree_util.tree_map_with_path(fit, opt_state, is_leaf=_is_box)


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def _dict_keys(path) -> tuple:
    """The parameter path inside an optimizer state path: its trailing dictionary keys."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(entry.key)
    return tuple(reversed(keys))


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
