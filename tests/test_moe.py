"""Mixture-of-experts blocks: the routing plan against a Python one, the layer against each
token run through its experts in float64 NumPy (with and without capacity drops), the router
losses against transformers' and NumPy's, and their place in the training loss."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.bench.flops import model_flops
from jaxlm.config import ModelConfig, load_config
from jaxlm.errors import ConfigError
from jaxlm.layers.moe import MoeMlp, expert_capacity, routing
from jaxlm.models import build_model, init_params
from jaxlm.train.losses import (
    LOSSES,
    router_losses,
    sown_router_logits,
    token_loss,
    training_loss,
)

EXPERTS, K, EMBED, MLP = 4, 2, 8, 12
MOE = [
    *TINY_MODEL,
    "model.num_experts=4",
    "model.experts_per_token=2",
    "model.mlp_type=gated",
    "model.activation=silu",
    "model.use_bias=false",
]


def layer_config(**changes) -> ModelConfig:
    """The layer's config: gated SiLU experts unless `changes` say otherwise."""
    base = ModelConfig(
        num_experts=EXPERTS, experts_per_token=K, embed_dim=EMBED, mlp_dim=MLP, init_std=0.5
    )
    return dataclasses.replace(base, **{"mlp_type": "gated", "activation": "silu", **changes})


def python_plan(expert_ids: np.ndarray, capacity: int) -> dict[tuple[int, int], int]:
    """{(token, choice): rank in its expert's buffer} of the choices kept: every token's first
    choice before any second choice, tokens in order, until an expert's buffer is full."""
    filled, kept = [0] * EXPERTS, {}
    for choice in range(expert_ids.shape[1]):
        for token in range(expert_ids.shape[0]):
            expert = expert_ids[token, choice]
            if filled[expert] < capacity:
                kept[token, choice] = filled[expert]
                filled[expert] += 1
    return kept


@pytest.mark.parametrize("capacity", [1, 3, 9])
def test_routing_fills_buffers_by_preference(capacity):
    rng = np.random.default_rng(capacity)
    length = 9
    expert_ids = np.stack([rng.permutation(EXPERTS)[:K] for _ in range(length)])
    buffer_tokens, slots = map(np.asarray, routing(jnp.asarray(expert_ids), EXPERTS, capacity))
    kept = python_plan(expert_ids, capacity)
    dropped = EXPERTS * capacity
    expected_buffers = np.full(dropped, length)
    for (token, choice), rank in kept.items():
        slot = expert_ids[token, choice] * capacity + rank
        assert slots[token, choice] == slot
        expected_buffers[slot] = token
    for token, choice in np.ndindex(length, K):
        if (token, choice) not in kept:
            assert slots[token, choice] == dropped
    np.testing.assert_array_equal(buffer_tokens, expected_buffers)
    assert (capacity == length) == (len(kept) == length * K)  # drops only below the length


def numpy_moe(params: dict, x: np.ndarray, cfg: ModelConfig, capacity: int) -> np.ndarray:
    """Each token through its chosen experts in float64, skipping choices over `capacity`."""
    p = {k: np.asarray(v, np.float64) for k, v in nn.unbox(params).items() if k != "router"}
    router = np.asarray(nn.unbox(params)["router"]["kernel"], np.float64)
    x = np.asarray(x, np.float64)
    silu = lambda z: z / (1 + np.exp(-z))  # noqa: E731
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    activation = silu if cfg.activation == "silu" else relu
    out = np.zeros_like(x)
    for row in range(x.shape[0]):
        logits = x[row] @ router
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        expert_ids = np.argsort(-probabilities, axis=-1, kind="stable")[:, :K]
        kept = python_plan(expert_ids, capacity)
        for token in range(x.shape[1]):
            weights = probabilities[token, expert_ids[token]]
            if cfg.router_renormalize:
                weights = weights / weights.sum()
            for choice, expert in enumerate(expert_ids[token]):
                if (token, choice) not in kept:
                    continue
                h = activation(x[row, token] @ p["wi"][expert])
                if cfg.mlp_type == "gated":
                    h = activation(x[row, token] @ p["wi_gate"][expert]) * (
                        x[row, token] @ p["wi"][expert]
                    )
                out[row, token] += weights[choice] * (h @ p["wo"][expert])
    return out


@pytest.mark.parametrize(
    "changes",
    [{}, dict(mlp_type="plain", activation="relu", router_renormalize=False)],
    ids=["gated-renormalized", "plain-router-probabilities"],
)
def test_every_token_reaches_its_experts(changes):
    """Dropless (the default, and always when deterministic): each token's output is the
    weighted sum of its chosen experts' outputs."""
    cfg = layer_config(**changes)
    x = jax.random.normal(jax.random.key(1), (3, 7, EMBED))
    params = MoeMlp(cfg).init(jax.random.key(0), x)["params"]
    expected = numpy_moe(params, x, cfg, capacity=7)
    for deterministic in (True, False):
        got = MoeMlp(cfg).apply({"params": params}, x, deterministic=deterministic)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_capacity_drops_the_least_preferred_choices_in_training_only():
    """With a capacity factor of 1, 7 tokens x 2 choices over 4 experts leave 4 places an
    expert: choices past them are skipped while training; evaluation drops none."""
    cfg = layer_config(expert_capacity_factor=1.0)
    assert expert_capacity(cfg, 7, deterministic=False) == 4
    assert expert_capacity(cfg, 7, deterministic=True) == 7
    x = jax.random.normal(jax.random.key(2), (3, 7, EMBED))
    params = MoeMlp(cfg).init(jax.random.key(0), x)["params"]
    trained = MoeMlp(cfg).apply({"params": params}, x, deterministic=False)
    np.testing.assert_allclose(trained, numpy_moe(params, x, cfg, 4), rtol=1e-5, atol=1e-6)
    dropless = numpy_moe(params, x, cfg, 7)
    assert np.abs(np.asarray(trained) - dropless).max() > 0.1  # some choices were dropped
    evaluated = MoeMlp(cfg).apply({"params": params}, x, deterministic=True)
    np.testing.assert_allclose(evaluated, dropless, rtol=1e-5, atol=1e-6)


def numpy_router_losses(logits: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Per layer: experts x sum_e (share of valid tokens choosing e) (their mean probability
    of e); and the mean squared log-normaliser; each averaged over layers."""
    logits = np.asarray(logits, np.float64)
    balances, zs = [], []
    for layer in logits:
        rows = layer[valid.astype(bool)]
        probabilities = np.exp(rows - rows.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        top = np.argsort(-probabilities, axis=-1)[:, :K]
        share = np.array([(top == e).any(-1).mean() for e in range(EXPERTS)])
        balances.append(EXPERTS * np.sum(share * probabilities.mean(0)))
        log_z = np.log(np.exp(rows).sum(-1))
        zs.append(np.mean(log_z**2))
    return np.mean(balances), np.mean(zs)


def test_router_losses_match_numpy_and_transformers():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 6, EXPERTS)).astype(np.float32)
    valid = np.ones((2, 6), np.int32)
    valid[1, 4:] = 0
    balance, z = router_losses(jnp.asarray(logits), jnp.asarray(valid), K)
    expected_balance, expected_z = numpy_router_losses(logits, valid)
    assert float(balance) == pytest.approx(expected_balance, rel=1e-5)
    assert float(z) == pytest.approx(expected_z, rel=1e-5)
    balanced = np.zeros((1, 1, EXPERTS, EXPERTS), np.float32)  # each expert chosen alike
    balanced[0, 0] = 5 * (np.eye(EXPERTS) + np.roll(np.eye(EXPERTS), 1, axis=1))
    assert float(router_losses(jnp.asarray(balanced), jnp.ones((1, EXPERTS)), K)[0]) == (
        pytest.approx(K, rel=1e-3)
    )
    torch = pytest.importorskip("torch")
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    for layer in logits:  # transformers pools its layers' tokens: compare one layer at a time
        expected = mixtral.load_balancing_loss_func(
            (torch.from_numpy(layer.reshape(-1, EXPERTS)),),
            EXPERTS,
            K,
            torch.from_numpy(valid),
        )
        got = router_losses(jnp.asarray(layer[None]), jnp.asarray(valid), K)[0]
        assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_training_loss_adds_the_router_losses_of_every_layer():
    """The loss is the token loss plus the weighted router losses of the logits every block's
    router sowed (a layer each, read back here from rematerialized blocks); evaluation's loss
    has none."""
    regularized = ["train.router_aux_loss=0.1", "train.router_z_loss=0.01"]
    cfg = load_config(None, [*MOE, *regularized, "model.remat_policy=full"])
    model = build_model(cfg.model)
    params = nn.unbox(init_params(cfg.model, jax.random.key(0)))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 100, (2, 16)).astype(np.int32)
    segments = np.ones((2, 16), np.int32)
    segments[1, 12:] = 0
    batch = {"inputs": tokens, "targets": tokens, "weights": segments.astype(np.float32)}
    batch["segment_ids"] = segments
    loss, stats = jax.jit(lambda p: training_loss(cfg)(model, p, batch, None, True))(params)
    logits, state = jax.jit(
        lambda p: model.apply({"params": p}, tokens, None, segments, mutable=["intermediates"])
    )(params)
    router_logits = sown_router_logits(state["intermediates"])
    assert router_logits.shape == (cfg.model.num_layers, 2, 16, 4)
    balance, z = numpy_router_losses(np.asarray(router_logits), segments)
    plain, _ = token_loss(logits, tokens, batch["weights"], cfg.model.vocab_size)
    assert float(loss) == pytest.approx(float(plain) + 0.1 * balance + 0.01 * z, rel=1e-5)
    assert float(stats["router_balance"] / stats["weights"]) == pytest.approx(balance, rel=1e-5)
    eval_loss, eval_stats = jax.jit(lambda p: LOSSES["gpt"](model, p, batch, None, True))(params)
    assert float(eval_loss) == pytest.approx(float(plain), rel=1e-6)
    assert "router_balance" not in eval_stats


def test_model_flops_count_the_experts_a_token_meets():
    """A token meets 2 of 4 experts: the arithmetic parameters are those of a dense model
    whose MLP is two experts wide, plus the router."""
    moe = load_config(None, MOE).model
    dense = load_config(None, [*MOE[:-5], "model.mlp_type=gated", "model.use_bias=false"]).model
    dense = dataclasses.replace(dense, mlp_dim=2 * moe.mlp_dim)
    router = moe.num_layers * moe.embed_dim * moe.num_experts
    assert model_flops(moe, 16).arithmetic_params == (
        model_flops(dense, 16).arithmetic_params + router
    )


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.num_experts=1"], "model.num_experts"),
        (["model.num_experts=4", "model.family=bert"], "model.num_experts"),
        (["model.num_experts=4", "model.experts_per_token=5"], "model.experts_per_token"),
        (
            ["model.num_experts=4", "model.expert_capacity_factor=-1"],
            "model.expert_capacity_factor",
        ),
        (["train.router_aux_loss=-0.1"], "train.router_aux_loss"),
    ],
)
def test_bad_expert_settings_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [*TINY_MODEL, *overrides])
