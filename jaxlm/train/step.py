"""Pure train and eval steps, and their compiled, sharded versions."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.models import build_model
from jaxlm.parallel import BATCH_AXES, batch_sharding, replicated
from jaxlm.train.losses import bert_head_weights, training_loss
from jaxlm.train.optim import apply_updates
from jaxlm.train.state import TrainState


def split_microbatches(batch: dict, microbatches: int) -> dict:
    """[batch, ...] arrays -> [microbatches, batch / microbatches, ...].

    Microbatch j takes rows j, j + microbatches, ...: a device's contiguous block of rows holds
    rows of every microbatch, so each microbatch stays spread over all the batch devices.
    """

    def split(x):
        x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "activation_batch"))

    return jax.tree.map(split, batch)


def accumulated_gradients(
    loss_fn, model, params, batch, dropout_key, microbatches, unroll=1, normalizers=None
):
    """(mean loss, summed stats, gradients) of the whole batch, `unroll` microbatches at a time
    (0: all of them, with no loop): the same as one full-batch pass.

    A loss that is a mean over weighted tokens is summed times the microbatch's weight, with its
    gradients and the statistics, then divided by the total weight. Given `normalizers` (the
    whole batch's, see `bert_loss`), the loss takes them and returns its microbatch's share of
    the whole batch's loss, which is summed.
    Microbatch i draws its dropout masks from `fold_in(dropout_key, i)`. Unrolled microbatches
    are independent computations that XLA may run side by side (on the CPU, on different cores).
    """

    def summed_loss(params, microbatch, index):
        rngs = {"dropout": jax.random.fold_in(dropout_key, index)}
        if normalizers is not None:
            return loss_fn(model, params, microbatch, rngs, False, normalizers=normalizers)
        loss, stats = loss_fn(model, params, microbatch, rngs, deterministic=False)
        return loss * jnp.maximum(stats["weights"], 1.0), stats

    def accumulate(carry, inputs):
        loss, grads, stats = carry
        (new_loss, new_stats), new_grads = jax.value_and_grad(summed_loss, has_aux=True)(
            params, *inputs
        )
        return (
            loss + new_loss,
            jax.tree.map(jnp.add, grads, new_grads),
            jax.tree.map(jnp.add, stats, new_stats),
        ), None

    parts = split_microbatches(batch, microbatches)
    first = jax.tree.map(lambda x: x[0], parts)
    stats_shape = jax.eval_shape(lambda: summed_loss(params, first, 0)[1])
    zeros = (
        jnp.zeros((), jnp.float32),
        jax.tree.map(jnp.zeros_like, params),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape),
    )
    if unroll == 0 or unroll >= microbatches:
        unroll = True  # no loop at all
    (loss, grads, stats), _ = jax.lax.scan(
        accumulate, zeros, (parts, jnp.arange(microbatches)), unroll=unroll
    )
    if normalizers is not None:
        return loss, stats, grads
    total = jnp.maximum(stats["weights"], 1.0)
    return loss / total, stats, jax.tree.map(lambda g: g / total, grads)


def make_train_step(
    cfg: Config,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule | None = None,
    loss_fn: Callable | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`(state, batch) -> (state, metrics)`; dropout keys derive from the seed and the step.

    `loss_fn` replaces the family's loss (`jaxlm.train.losses.training_loss`), with the same
    signature; the learning rate is reported when the optimizer's `schedule` is given. With
    label smoothing or a z-loss, `loss` is what is minimised and `nll` the plain mean negative
    log-likelihood.

    With `train.microbatches` > 1 the gradients are accumulated over that many slices of the
    batch; loss, gradients and metrics are those of the whole batch. `metrics["finite"]` says
    whether the loss and gradient norm were finite; with `train.nan_policy=skip` a non-finite
    step leaves parameters and optimizer state unchanged.
    """
    model, loss_fn = build_model(cfg.model), loss_fn or training_loss(cfg)
    base_key = jax.random.key(cfg.train.seed)
    skip_nonfinite = cfg.train.nan_policy == "skip"
    microbatches = cfg.train.microbatches

    def whole_batch_normalizers(batch):
        """BERT's heads' weights in the whole batch: its loss is not one mean over tokens."""
        if cfg.model.family != "bert":
            return None
        return {head: jnp.sum(w) for head, w in bert_head_weights(batch).items()}

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_key = jax.random.fold_in(base_key, state.step)
        if microbatches > 1:
            value, stats, grads = accumulated_gradients(
                loss_fn,
                model,
                state.params,
                batch,
                dropout_key,
                microbatches,
                cfg.train.microbatch_unroll,
                whole_batch_normalizers(batch),
            )
        else:
            (value, stats), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
                model, state.params, batch, {"dropout": dropout_key}, deterministic=False
            )
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates)
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
        }
        if cfg.train.label_smoothing or cfg.train.z_loss:
            metrics["nll"] = stats["nll"] / jnp.maximum(stats["weights"], 1.0)
        if "router_balance" in stats:
            metrics["router_balance"] = stats["router_balance"] / jnp.maximum(stats["weights"], 1.0)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return train_step


def check_microbatch_size(cfg: Config, mesh: Mesh) -> None:
    """Each microbatch must still split evenly over the batch (data * fsdp) devices."""
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    rows = cfg.data.batch_size // cfg.train.microbatches
    if rows % shards:
        raise ConfigError(
            f"config key 'train.microbatches': microbatches of {rows} rows "
            f"(data.batch_size {cfg.data.batch_size} / {cfg.train.microbatches}) cannot be "
            f"split over data*fsdp = {shards} devices"
        )


def compile_train_step(cfg: Config, tx, schedule, state_sharding, mesh: Mesh, loss_fn=None):
    """The jitted train step with explicit shardings; it donates the state."""
    check_microbatch_size(cfg, mesh)
    return jax.jit(
        make_train_step(cfg, tx, schedule, loss_fn),
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )
