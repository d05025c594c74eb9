"""AdamW + warmup/cosine + clipping against a float64 NumPy transcription of the formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.config import OptimConfig
from jaxlm.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask

CFG = OptimConfig(
    learning_rate=1e-2, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0
)


def _lr(step, total=100):
    """Linear warmup from 0, then cosine from the peak down to min_lr_ratio * peak."""
    peak, floor = CFG.learning_rate, CFG.learning_rate * CFG.min_lr_ratio
    if step < CFG.warmup_steps:
        return peak * step / CFG.warmup_steps
    progress = min((step - CFG.warmup_steps) / (total - CFG.warmup_steps), 1.0)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("step", [0, 1, 5, 10, 11, 40, 55, 99, 100, 150])
def test_schedule_matches_formula(step):
    assert float(learning_rate_schedule(CFG, 100)(step)) == pytest.approx(_lr(step), rel=1e-5)


def test_weight_decay_applies_to_matrices_only():
    params = {
        "dense": {"kernel": 1.0, "bias": 1.0},
        "norm": {"scale": 1.0, "bias": 1.0},
        "token_embed": {"embedding": 1.0},
    }
    mask = weight_decay_mask(params)
    assert mask == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "token_embed": {"embedding": True},
    }


def test_two_steps_match_numpy_adamw_with_clipping():
    rng = np.random.default_rng(0)
    params = {"w": {"kernel": rng.normal(size=(3, 4))}, "b": {"bias": rng.normal(size=(4,))}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape) * 3.0, params) for _ in range(2)]
    tx, _ = make_optimizer(CFG, total_steps=100)

    state = tx.init(jax.tree.map(jnp.float32, params))
    got = jax.tree.map(jnp.float32, params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.float32, g), state, got)
        got = optax.apply_updates(got, updates)

    want = {k: dict(v) for k, v in params.items()}
    mu = jax.tree.map(np.zeros_like, params)
    nu = jax.tree.map(np.zeros_like, params)
    for t, g in enumerate(grads, start=1):
        norm = math.sqrt(sum(float(np.sum(x**2)) for x in jax.tree.leaves(g)))
        scale = min(1.0, CFG.grad_clip / norm)
        lr = _lr(t - 1)
        for group, name in (("w", "kernel"), ("b", "bias")):
            gc = g[group][name] * scale
            mu[group][name] = CFG.b1 * mu[group][name] + (1 - CFG.b1) * gc
            nu[group][name] = CFG.b2 * nu[group][name] + (1 - CFG.b2) * gc**2
            m_hat = mu[group][name] / (1 - CFG.b1**t)
            v_hat = nu[group][name] / (1 - CFG.b2**t)
            update = m_hat / (np.sqrt(v_hat) + CFG.eps)
            if name == "kernel":
                update = update + CFG.weight_decay * want[group][name]
            want[group][name] = want[group][name] - lr * update
    for path in (("w", "kernel"), ("b", "bias")):
        np.testing.assert_allclose(
            got[path[0]][path[1]], want[path[0]][path[1]], rtol=1e-5, atol=1e-6
        )
