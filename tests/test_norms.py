"""jaxlm.layers.norms.LayerNorm: values and gradients against float64 NumPy, and the same
parameters and outputs as flax.linen.LayerNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers.norms import LayerNorm, layer_norm

EPS = 1e-5


def _inputs(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)) * 2 + 0.5
    scale, bias = rng.normal(size=16), rng.normal(size=16)
    return x, scale, bias, [jnp.asarray(a, dtype) for a in (x, scale, bias)]


def _layer_norm64(x, scale, bias):
    normalized = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + EPS)
    return normalized * scale + bias


def _loss64(x, scale, bias, weights):
    return np.sum(_layer_norm64(x, scale, bias) * weights)


def _numeric_gradient(f, arrays, index, h=1e-6):
    """Central differences of f over arrays[index], in float64."""
    grad = np.zeros_like(arrays[index])
    for i in np.ndindex(grad.shape):
        plus, minus = [a.copy() for a in arrays], [a.copy() for a in arrays]
        plus[index][i] += h
        minus[index][i] -= h
        grad[i] = (f(*plus) - f(*minus)) / (2 * h)
    return grad


def test_value_and_gradients_match_float64():
    x, scale, bias, (x32, scale32, bias32) = _inputs()
    np.testing.assert_allclose(
        layer_norm(x32, scale32, bias32, EPS), _layer_norm64(x, scale, bias), atol=1e-5
    )
    weights = np.random.default_rng(1).normal(size=x.shape)
    grads = jax.grad(lambda *a: jnp.sum(layer_norm(*a, EPS) * weights), argnums=(0, 1, 2))(
        x32, scale32, bias32
    )
    for index, grad in enumerate(grads):
        expected = _numeric_gradient(_loss64, [x, scale, bias, weights], index)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_parameters_outputs_and_gradients_as_flax(dtype):
    _, _, _, (x, _, _) = _inputs(dtype)
    ours, theirs = LayerNorm(epsilon=EPS, dtype=dtype), nn.LayerNorm(epsilon=EPS, dtype=dtype)
    params = theirs.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(1), p.shape), params)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, params
    )
    tol = {"atol": 1e-5} if dtype == jnp.float32 else {"atol": 0.05}
    out = ours.apply(params, x)
    assert out.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(theirs.apply(params, x), np.float32), **tol
    )
    weights = np.random.default_rng(2).normal(size=x.shape)

    def loss(module):
        return lambda params, x: jnp.sum(module.apply(params, x).astype(jnp.float32) * weights)

    ours_grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    theirs_grads = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(theirs_grads), strict=True):
        assert a.dtype == b.dtype
        scale = float(np.abs(np.asarray(b, np.float32)).max())
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol["atol"] * scale
        )
