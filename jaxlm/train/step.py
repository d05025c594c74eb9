"""Pure train and eval steps, and their compiled, sharded versions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxlm.config import Config
from jaxlm.models import build_model
from jaxlm.parallel import batch_sharding, replicated
from jaxlm.train.losses import LOSSES
from jaxlm.train.state import TrainState


def make_train_step(
    cfg: Config, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`(state, batch) -> (state, metrics)`; dropout keys derive from the seed and the step.

    `metrics["finite"]` says whether the loss and gradient norm were finite; with
    `train.nan_policy=skip` a non-finite step leaves parameters and optimizer state unchanged.
    """
    model, loss_fn = build_model(cfg.model), LOSSES[cfg.model.family]
    base_key = jax.random.key(cfg.train.seed)
    skip_nonfinite = cfg.train.nan_policy == "skip"

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rngs = {"dropout": jax.random.fold_in(base_key, state.step)}

        def loss(params):
            return loss_fn(model, params, batch, rngs, deterministic=False)

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if skip_nonfinite:
            keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {
            "loss": value,
            "accuracy": stats["correct"] / jax.numpy.maximum(stats["weights"], 1.0),
            "tokens": stats["weights"],
            "grad_norm": grad_norm,
            "finite": finite,
            "learning_rate": schedule(state.step),
        }
        return new_state, metrics

    return train_step


def make_eval_step(cfg: Config) -> Callable[[dict, dict], dict]:
    """`(params, batch) -> summed statistics` (nll, weights, correct) without dropout."""
    model, loss_fn = build_model(cfg.model), LOSSES[cfg.model.family]

    def eval_step(params: dict, batch: dict) -> dict:
        return loss_fn(model, params, batch, None, deterministic=True)[1]

    return eval_step


def compile_steps(cfg: Config, tx, schedule, state_sharding, mesh: Mesh):
    """Jitted train and eval steps with explicit shardings; the train step donates the state."""
    data, scalar = batch_sharding(mesh), replicated(mesh)
    train_step = jax.jit(
        make_train_step(cfg, tx, schedule),
        in_shardings=(state_sharding, data),
        out_shardings=(state_sharding, scalar),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(cfg), in_shardings=(state_sharding.params, data), out_shardings=scalar
    )
    return train_step, eval_step
