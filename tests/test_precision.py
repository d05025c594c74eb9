"""Mixed precision and rematerialization change how the train step computes, not what it trains:
bf16 matrix multiplies with float32 weights, optimizer state and loss; the same gradients under
every remat policy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import load_config
from jaxlm.models import build_model, init_params
from jaxlm.parallel import activate, make_mesh, shard_batch
from jaxlm.train.losses import causal_lm_loss
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state
from jaxlm.train.step import compile_train_step

TINY = TINY_MODEL + [
    "model.vocab_multiple=8",
    "data.batch_size=4",
    "optim.warmup_steps=0",
    "optim.learning_rate=1e-3",
]


def _batch(batch=4, length=16, vocab=100):
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, vocab, size=(batch, length + 1)).astype(np.int32)
    weights = np.ones((batch, length), np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def _train_step(*overrides):
    cfg = load_config(None, [*TINY, "mesh.data=1", *overrides])
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = init_state(cfg.model, tx, mesh, seed=0)
    train_step = compile_train_step(cfg, tx, schedule, shardings, mesh)
    with activate(mesh):
        return train_step(state, shard_batch(_batch(), mesh))


def test_bf16_step_keeps_float32_weights_optimizer_state_and_loss():
    state, metrics = _train_step("model.dtype=bfloat16")
    _, ref_metrics = _train_step()
    adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's scale_by_adam state
    for tree in (state.params, adam.mu, adam.nu):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == metrics["grad_norm"].dtype == jnp.float32
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-2)
    assert metrics["loss"] != ref_metrics["loss"]  # bf16 did change the arithmetic


def _equations(jaxpr):
    """Every equation of a jaxpr, including those of nested jaxprs (scan, remat, pjit)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


def test_bf16_matmuls_with_float32_softmax_and_cross_entropy():
    cfg = load_config(None, [*TINY, "model.dtype=bfloat16"]).model
    model, params = build_model(cfg), nn.unbox(init_params(cfg, jax.random.key(0)))
    batch = _batch()

    def loss(params):
        return causal_lm_loss(model, params, batch, None, deterministic=True)[0]

    equations = list(_equations(jax.make_jaxpr(loss)(params).jaxpr))
    matmuls = [eqn for eqn in equations if eqn.primitive.name == "dot_general"]
    assert matmuls and all(v.aval.dtype == jnp.bfloat16 for e in matmuls for v in e.invars)
    exp_log = [eqn for eqn in equations if eqn.primitive.name in ("exp", "log")]
    assert exp_log and all(e.invars[0].aval.dtype == jnp.float32 for e in exp_log)

    # The loss is float64 cross-entropy of the float32 logits, not of bf16-rounded ones.
    logits = model.apply({"params": params}, batch["inputs"])
    assert logits.dtype == jnp.float32
    logits = np.asarray(logits, np.float64)
    peak = logits.max(-1, keepdims=True)
    log_z = peak[..., 0] + np.log(np.exp(logits - peak).sum(-1))
    picked = np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(loss(params), (log_z - picked).mean(), rtol=1e-6)


def _gradients(policy):
    cfg = load_config(None, [*TINY, f"model.remat_policy={policy}"]).model
    model = build_model(cfg)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    grad = jax.jit(jax.grad(lambda p: causal_lm_loss(model, p, _batch(), None, True)[0]))
    return jax.device_get(grad(params))


@pytest.fixture(scope="module")
def gradients_without_remat():
    return _gradients("none")


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_gradients(gradients_without_remat, policy):
    grads = _gradients(policy)
    for got, want in zip(
        jax.tree.leaves(grads), jax.tree.leaves(gradients_without_remat), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
