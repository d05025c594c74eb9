"""The optimizers, schedules and clipping against float64 NumPy transcriptions of the formulas."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.config import OptimConfig, load_config
from jaxlm.train.optim import (
    learning_rate_schedule,
    make_optimizer,
    matrix_view,
    weight_decay_mask,
)

CFG = OptimConfig(
    learning_rate=1e-2, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0
)
TOTAL = 100


def _lr(step, cfg=CFG, total=TOTAL):
    """Linear warmup from 0 to the peak, then `cfg.schedule`."""
    peak, floor, warmup = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio, cfg.warmup_steps
    if step < warmup:
        return peak * step / warmup
    since, span = step - warmup, total - warmup
    if cfg.schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(since / span, 1.0)))
    if cfg.schedule == "linear":
        return peak + (floor - peak) * min(since / span, 1.0)
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":  # the last cooldown_fraction of the steps: 1 - sqrt(share done)
        cooldown = round(cfg.cooldown_fraction * total)
        done = min(max(step - (total - cooldown), 0) / cooldown, 1.0)
        return floor + (peak - floor) * (1 - math.sqrt(done))
    # rsqrt: peak * sqrt(warmup / step); without warmup, as if it were one step: 1 / sqrt(step + 1)
    return peak * math.sqrt(max(warmup, 1) / (step + (warmup == 0)))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "rsqrt", "wsd"])
@pytest.mark.parametrize("warmup", [10, 0])
@pytest.mark.parametrize("step", [0, 1, 5, 10, 11, 40, 55, 80, 81, 90, 99, 100, 150])
def test_schedule_matches_formula(schedule, warmup, step):
    cfg = dataclasses.replace(CFG, schedule=schedule, warmup_steps=warmup)
    want = _lr(step, cfg)
    assert float(learning_rate_schedule(cfg, TOTAL)(step)) == pytest.approx(want, rel=1e-5)


def test_wsd_stable_phase_does_not_depend_on_the_run_length():
    """A run of wsd can be lengthened from a checkpoint of its stable phase: every length's
    schedule is the same until its own cooldown starts."""
    cfg = dataclasses.replace(CFG, schedule="wsd")
    short, long = learning_rate_schedule(cfg, TOTAL), learning_rate_schedule(cfg, 3 * TOTAL)
    steps = jnp.arange(TOTAL + 1)
    np.testing.assert_array_equal(short(steps[:80]), long(steps[:80]))
    assert float(short(TOTAL)) == pytest.approx(CFG.learning_rate * CFG.min_lr_ratio)
    assert float(long(TOTAL)) == np.float32(CFG.learning_rate)


def test_wsd_cooldown_longer_than_the_steps_after_warmup_takes_all_of_them():
    cfg = dataclasses.replace(CFG, schedule="wsd", cooldown_fraction=1.0)
    schedule = learning_rate_schedule(cfg, TOTAL)
    floor = CFG.learning_rate * CFG.min_lr_ratio
    assert float(schedule(10)) == pytest.approx(CFG.learning_rate)  # the warmup's end
    assert float(schedule(55)) == pytest.approx(
        floor + (CFG.learning_rate - floor) * (1 - 0.5**0.5)
    )
    assert float(schedule(TOTAL)) == pytest.approx(floor)


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


@pytest.mark.parametrize(
    "shape, view",
    [
        ((768, 12, 64), (768, 768)),  # attention query/key/value kernel: [embed, heads, kv]
        ((12, 64, 768), (768, 768)),  # attention output kernel: [heads, kv, embed]
        ((12, 768, 12, 64), (12, 768, 768)),  # stacked layers first
        ((12, 12, 64, 768), (12, 768, 768)),  # the larger pair of small axes is merged
        ((4096, 8, 128), (4096, 8, 128)),  # grouped-query keys: 4096 x 128 factor as they are
        ((768, 3072), (768, 3072)),
        ((12, 64), (12, 64)),
        ((2, 3, 4), (2, 12)),  # too small to factor, merged all the same
    ],
)
def test_adafactor_matrix_view(shape, view):
    assert matrix_view(shape) == view


# The test's parameters, and the shapes Adafactor sees them in (factored: both sides >= 128).
SHAPES = {("attn", "kernel"): (128, 4, 32), ("w", "kernel"): (3, 4), ("b", "bias"): (4,)}
VIEWS = {("attn", "kernel"): (128, 128), ("w", "kernel"): (3, 4), ("b", "bias"): (4,)}


def _rms(x):
    return math.sqrt(float(np.mean(x**2)))


def _direction(cfg, state, grad, param, t):
    """The update before weight decay and the learning rate, at step t = 1, 2, ..."""
    if cfg.optimizer == "adamw":
        state["m"] = cfg.b1 * state.get("m", 0) + (1 - cfg.b1) * grad
        state["v"] = cfg.b2 * state.get("v", 0) + (1 - cfg.b2) * grad**2
        m_hat, v_hat = state["m"] / (1 - cfg.b1**t), state["v"] / (1 - cfg.b2**t)
        return m_hat / (np.sqrt(v_hat) + cfg.eps)
    if cfg.optimizer == "lion":
        direction = np.sign(cfg.b1 * state.get("m", 0) + (1 - cfg.b1) * grad)
        state["m"] = cfg.b2 * state.get("m", 0) + (1 - cfg.b2) * grad
        return direction
    if cfg.optimizer == "sgd":
        state["m"] = cfg.b1 * state.get("m", 0) + grad
        return state["m"]
    # adafactor (Shazeer & Stern 2018, algorithm 4 with relative steps of the given size)
    decay = 1 - t**-cfg.adafactor_decay_rate
    squared = grad**2 + 1e-30
    if squared.ndim == 2 and min(squared.shape) >= 128:  # factored: row and column means
        state["r"] = decay * state.get("r", 0) + (1 - decay) * squared.mean(axis=1)
        state["c"] = decay * state.get("c", 0) + (1 - decay) * squared.mean(axis=0)
        second_moment = np.outer(state["r"], state["c"]) / state["r"].mean()
    else:
        second_moment = state["v"] = decay * state.get("v", 0) + (1 - decay) * squared
    update = grad / np.sqrt(second_moment)
    update = update / max(1.0, _rms(update)) * max(1e-3, _rms(param))
    if cfg.adafactor_momentum == 0:
        return update
    beta = cfg.adafactor_momentum
    state["m"] = beta * state.get("m", 0) + (1 - beta) * update
    return state["m"]


def _numpy_steps(cfg, params, grads):
    params, states = dict(params), {path: {} for path in params}
    for t, grad in enumerate(grads, start=1):
        norm = math.sqrt(sum(float(np.sum(g**2)) for g in grad.values()))
        clip = min(1.0, cfg.grad_clip / norm)
        for path, param in params.items():
            shape = VIEWS[path] if cfg.optimizer == "adafactor" else param.shape
            g, p = (grad[path] * clip).reshape(shape), param.reshape(shape)
            update = _direction(cfg, states[path], g, p, t).reshape(param.shape)
            if path[1] == "kernel":
                update = update + cfg.weight_decay * param
            params[path] = param - _lr(t - 1, cfg) * update
    return params


def _nest(flat):
    return {group: {name: value} for (group, name), value in flat.items()}


@pytest.mark.parametrize(
    "optimizer, settings",
    [
        ("adamw", dict(b1=0.9, b2=0.95)),
        ("adafactor", dict(b1=0.9, b2=0.95)),  # b1, b2 unused
        ("adafactor", dict(adafactor_decay_rate=0.5, adafactor_momentum=0.8)),
        ("lion", dict(b1=0.9, b2=0.99)),
        ("sgd", dict(b1=0.9, b2=0.0)),
    ],
)
def test_three_steps_match_numpy_with_clipping(optimizer, settings):
    cfg = dataclasses.replace(CFG, optimizer=optimizer, **settings)
    rng = np.random.default_rng(0)
    params = {path: rng.normal(size=shape) for path, shape in SHAPES.items()}
    grads = [{p: rng.normal(size=x.shape) * 3.0 for p, x in params.items()} for _ in range(3)]
    tx, _ = make_optimizer(cfg, total_steps=TOTAL)

    got = jax.tree.map(jnp.float32, _nest(params))
    state = tx.init(got)
    for grad in grads:
        updates, state = tx.update(jax.tree.map(jnp.float32, _nest(grad)), state, got)
        got = optax.apply_updates(got, updates)

    want = _numpy_steps(cfg, params, grads)
    for group, name in SHAPES:
        np.testing.assert_allclose(got[group][name], want[group, name], rtol=2e-5, atol=2e-6)
    if optimizer == "adafactor":  # the 128 x 128 view keeps a row and a column, not a matrix
        sizes = sum(x.size for x in jax.tree.leaves(state))
        momenta = sum(x.size for x in params.values()) if cfg.adafactor_momentum else 0
        assert momenta <= sizes < momenta + 128 * 128 / 10


def test_sgd_without_momentum_keeps_no_state():
    cfg = dataclasses.replace(CFG, optimizer="sgd", b1=0.0, grad_clip=0.0, weight_decay=0.0)
    tx, _ = make_optimizer(cfg, total_steps=TOTAL)
    params = {"w": {"kernel": jnp.ones((2, 3))}}
    grad = {"w": {"kernel": jnp.full((2, 3), 2.0)}}
    state = tx.init(params)
    assert [x.shape for x in jax.tree.leaves(state)] == [()]  # the schedule's step count only
    for step in range(2):
        updates, state = tx.update(grad, state, params)
        np.testing.assert_allclose(updates["w"]["kernel"], -2.0 * _lr(step, cfg), rtol=1e-6)


@pytest.mark.parametrize("step", [1, 1000, 4000, 10_000, 100_000])
def test_transformer_base_preset_follows_the_papers_learning_rate(step):
    """Vaswani et al. (2017), section 5.3: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    cfg = load_config("transformer-base").optim
    paper = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
    assert float(learning_rate_schedule(cfg, 100_000)(step)) == pytest.approx(paper, rel=1e-3)


def test_adamw_is_optax_adamw_so_earlier_checkpoints_restore():
    tx, schedule = make_optimizer(CFG, TOTAL)
    adamw = optax.chain(
        optax.clip_by_global_norm(CFG.grad_clip),
        optax.adamw(schedule, CFG.b1, CFG.b2, CFG.eps, weight_decay=0.1, mask=weight_decay_mask),
    )
    params = {"w": {"kernel": jnp.ones((3, 4))}, "b": {"bias": jnp.ones(4)}}
    state, want_state = tx.init(params), adamw.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(want_state)
    grad = jax.tree.map(lambda x: 0.3 * x, params)
    for _ in range(3):
        updates, state = tx.update(grad, state, params)
        want, want_state = adamw.update(grad, want_state, params)
        jax.tree.map(np.testing.assert_array_equal, updates, want)
