"""AdamW with linear warmup, cosine decay and global-norm gradient clipping."""

from __future__ import annotations

import jax
import optax

from jaxlm.config import OptimConfig

DECAYED = ("kernel", "embedding")  # biases, norm scales and 1-d parameters are not decayed


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then cosine down to min_lr_ratio * learning_rate."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


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


def make_optimizer(
    cfg: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule (for logging)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=weight_decay_mask,
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw), schedule
    return adamw, schedule
