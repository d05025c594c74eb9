"""Frozen parameters: no gradient, no optimizer state, never touched by an update. Frozen layers
of a stack whose other layers train: no gradient and no update (their rows of the optimizer
state stay as initialised, zeros for Adam's moments)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxlm.finetune.patterns import flat, nested


def subtree(tree: dict, paths: Collection[str]) -> dict:
    """The leaves of `tree` at `paths`, nested as in `tree`."""
    return nested({path: leaf for path, leaf in flat(tree).items() if path in paths})


def layer_mask(layers: tuple[bool, ...], ndim: int) -> jax.Array:
    """`layers` as a boolean array that broadcasts over a stacked parameter of `ndim` axes."""
    return jnp.asarray(layers).reshape((len(layers),) + (1,) * (ndim - 1))


def only_trainable(
    tx: optax.GradientTransformation,
    trainable: Collection[str],
    trained_layers: Mapping[str, tuple[bool, ...]] | None = None,
) -> optax.GradientTransformation:
    """`tx` over the parameters at the `trainable` paths alone: its state holds nothing for the
    others, and their updates are None, which `jaxlm.train.optim.apply_updates` skips (adding a
    zero update would not even leave them bitwise equal: -0.0 + 0.0 is +0.0). Parameters in
    `trained_layers` get an update of -0.0 in their other layers, which leaves every value as
    it is (x + -0.0 is x)."""
    trained_layers = trained_layers or {}

    def init(params):
        return tx.init(subtree(params, trainable))

    def update(grads, state, params=None):
        trained = None if params is None else subtree(params, trainable)
        updates, state = tx.update(subtree(grads, trainable), state, trained)
        updates = flat(updates)
        for path, layers in trained_layers.items():
            update = updates[path]
            updates[path] = jnp.where(layer_mask(layers, update.ndim), update, -0.0)
        return nested({path: updates.get(path) for path in flat(grads)}), state

    return optax.GradientTransformation(init, update)


def frozen_loss(
    loss_fn: Callable,
    trainable: Collection[str],
    model_params: Callable,
    trained_layers: Mapping[str, tuple[bool, ...]] | None = None,
) -> Callable:
    """`loss_fn` (the signature of `jaxlm.train.losses`) on `model_params(params)`, with no
    gradient flowing to the parameters outside `trainable` (none is computed for them), nor to
    the layers of a stacked parameter that `trained_layers` leaves out (theirs is zero)."""

    trained_layers = trained_layers or {}

    def held(path: str, leaf: jax.Array) -> jax.Array:
        if path not in trainable:
            return jax.lax.stop_gradient(leaf)
        if path in trained_layers:
            mask = layer_mask(trained_layers[path], leaf.ndim)
            return jnp.where(mask, leaf, jax.lax.stop_gradient(leaf))
        return leaf

    def loss(model, params, batch, rngs, deterministic, **options):
        leaves = {path: held(path, leaf) for path, leaf in flat(params).items()}
        return loss_fn(model, model_params(nested(leaves)), batch, rngs, deterministic, **options)

    return loss
