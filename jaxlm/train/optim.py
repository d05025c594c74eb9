"""The optimizers of `optim.optimizer` (AdamW, Adafactor, Lion, SGD), each with decoupled
weight decay on matrices, the learning-rate schedules of `optim.schedule` after a linear warmup,
and global-norm gradient clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import OptimConfig

DECAYED = ("kernel", "embedding")  # biases, norm scales and 1-d parameters are not decayed


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps (at most total_steps - 1), then by `cfg.schedule`:
    cosine or linear decay to min_lr_ratio * learning_rate at total_steps, constant, rsqrt:
    learning_rate * sqrt(w / (w + steps since the warmup)), w = max(warmup_steps, 1), or wsd
    (warmup-stable-decay): constant, then over the last cooldown_fraction of total_steps down to
    min_lr_ratio * learning_rate as 1 - sqrt(share of the cooldown done) (Hägele et al., 2024)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    peak, decay_steps, width = cfg.learning_rate, max(total_steps - warmup, 1), max(warmup, 1)
    after_warmup = {
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio),
        "linear": optax.linear_schedule(peak, peak * cfg.min_lr_ratio, decay_steps),
        "constant": optax.constant_schedule(peak),
        "rsqrt": lambda step: peak * jnp.sqrt(width / (width + jnp.maximum(step, 0))),
        "wsd": _stable_then_cooldown(cfg, decay_steps, total_steps),
    }[cfg.schedule]
    if warmup == 0:
        return after_warmup
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after_warmup], [warmup])


def _stable_then_cooldown(cfg: OptimConfig, decay_steps: int, total_steps: int) -> optax.Schedule:
    """The peak, then 1 - sqrt decay to min_lr_ratio * peak over the last
    round(cooldown_fraction * total_steps) of the `decay_steps` (at least one of them)."""
    cooldown = min(max(round(cfg.cooldown_fraction * total_steps), 1), decay_steps)
    stable, peak, floor = decay_steps - cooldown, cfg.learning_rate, cfg.min_lr_ratio

    def schedule(step):
        done = jnp.clip((step - stable) / cooldown, 0.0, 1.0)
        return peak * (floor + (1 - floor) * (1 - jnp.sqrt(done)))

    return schedule


def weight_decay_mask(params):
    """True for matrices (Dense kernels, embedding tables), by parameter name."""

    def decayed(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return bool(names) and names[-1] in DECAYED

    return jax.tree_util.tree_map_with_path(decayed, params)


def apply_updates(params, updates):
    """`optax.apply_updates`, except that a parameter whose update is None (a frozen one, see
    `jaxlm.finetune`) is left exactly as it is."""
    return jax.tree.map(
        lambda p, u: p if u is None else (p + u).astype(p.dtype),
        params,
        updates,
        is_leaf=lambda x: x is None,
    )


FACTOR_FROM = 128  # Adafactor factors the second moments of matrices this large both ways


def matrix_view(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape Adafactor factors a parameter in: its own when its two largest dimensions
    both reach `FACTOR_FROM`, else with the adjacent pair of smaller dimensions of largest
    product merged. Attention kernels, [embed, heads, head_dim] or [heads, head_dim, embed]
    (after a leading layer axis when stacked), so factor as [embed, heads * head_dim] matrices."""
    if len(shape) < 3 or sorted(shape)[-2] >= FACTOR_FROM:
        return shape
    pairs = [i for i in range(len(shape) - 1) if max(shape[i : i + 2]) < FACTOR_FROM]
    if not pairs:
        return shape
    i = max(pairs, key=lambda i: shape[i] * shape[i + 1])
    return (*shape[:i], shape[i] * shape[i + 1], *shape[i + 2 :])


def factored_as_matrices(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` (a factored second-moment scaling) applied to each parameter, gradient and
    update seen in its `matrix_view` shape."""

    def view(tree):
        return jax.tree.map(lambda x: x.reshape(matrix_view(x.shape)), tree)

    def update(updates, state, params=None):
        viewed, state = inner.update(view(updates), state, view(params))
        return jax.tree.map(lambda u, g: u.reshape(g.shape), viewed, updates), state

    return optax.GradientTransformation(lambda params: inner.init(view(params)), update)


def update_direction(cfg: OptimConfig) -> optax.GradientTransformation:
    """The optimizer's update before weight decay and the learning rate.

    - adamw: Adam's bias-corrected moments, m / (sqrt(v) + eps);
    - adafactor: the gradient over the root of a factored second-moment estimate (row and column
      means of matrices of at least 128 x 128, see `factored_as_matrices`; decay 1 - t^-c, c =
      adafactor_decay_rate), its RMS clipped to 1 per parameter, times the parameter's RMS (at
      least 1e-3): steps relative to the weights' size; with adafactor_momentum > 0, the moving
      average of these steps (no bias correction, as in Shazeer & Stern 2018);
    - lion: the sign of b1 * momentum + (1 - b1) * gradient, the momentum decaying with b2;
    - sgd: the gradient, or its momentum (decay b1) when b1 > 0.
    """
    if cfg.optimizer == "adamw":
        return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.optimizer == "adafactor":
        second_moments = optax.scale_by_factored_rms(
            min_dim_size_to_factor=FACTOR_FROM, decay_rate=cfg.adafactor_decay_rate
        )
        steps = [
            factored_as_matrices(second_moments),
            optax.clip_by_block_rms(1.0),
            optax.scale_by_param_block_rms(),
        ]
        if cfg.adafactor_momentum > 0:
            steps.append(optax.ema(cfg.adafactor_momentum, debias=False))
        return optax.chain(*steps)
    if cfg.optimizer == "lion":
        return optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2)
    return optax.trace(decay=cfg.b1) if cfg.b1 > 0 else optax.identity()


def make_optimizer(
    cfg: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule (for logging). Every optimizer takes the
    step -learning_rate * (direction + weight_decay * weight), the decay on matrices only; AdamW
    is exactly `optax.adamw`."""
    schedule = learning_rate_schedule(cfg, total_steps)
    optimizer = optax.chain(
        update_direction(cfg),
        optax.add_decayed_weights(cfg.weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(schedule),
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optimizer), schedule
    return optimizer, schedule
