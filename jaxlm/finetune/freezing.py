"""Frozen parameters: no gradient, no optimizer state, never touched by an update."""

from __future__ import annotations

from collections.abc import Callable, Collection

import jax
import optax

from jaxlm.finetune.patterns import flat, nested


def subtree(tree: dict, paths: Collection[str]) -> dict:
    """The leaves of `tree` at `paths`, nested as in `tree`."""
    return nested({path: leaf for path, leaf in flat(tree).items() if path in paths})


def only_trainable(
    tx: optax.GradientTransformation, trainable: Collection[str]
) -> optax.GradientTransformation:
    """`tx` over the parameters at the `trainable` paths alone: its state holds nothing for the
    others, and their updates are None, which `jaxlm.train.optim.apply_updates` skips (adding a
    zero update would not even leave them bitwise equal: -0.0 + 0.0 is +0.0)."""

    def init(params):
        return tx.init(subtree(params, trainable))

    def update(grads, state, params=None):
        trained = None if params is None else subtree(params, trainable)
        updates, state = tx.update(subtree(grads, trainable), state, trained)
        updates = flat(updates)
        return nested({path: updates.get(path) for path in flat(grads)}), state

    return optax.GradientTransformation(init, update)


def frozen_loss(loss_fn: Callable, trainable: Collection[str], model_params: Callable) -> Callable:
    """`loss_fn` (the signature of `jaxlm.train.losses`) on `model_params(params)`, with no
    gradient flowing to the parameters outside `trainable` (none is computed for them)."""

    def loss(model, params, batch, rngs, deterministic, **options):
        held = {
            path: leaf if path in trainable else jax.lax.stop_gradient(leaf)
            for path, leaf in flat(params).items()
        }
        return loss_fn(model, model_params(nested(held)), batch, rngs, deterministic, **options)

    return loss
