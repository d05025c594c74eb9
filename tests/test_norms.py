"""jaxlm.layers.norms: LayerNorm's values and gradients against float64 NumPy, and the same
parameters and outputs as flax.linen.LayerNorm; RMSNorm, with and without Gemma's unit offset,
against float64 NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers.norms import LayerNorm, RMSNorm, layer_norm, rms_scale

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


def _rms_norm64(x, weight, offset):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + EPS) * (offset + weight)


@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm_values_and_gradients_match_float64(unit_offset):
    x, weight, _, (x32, weight32, _) = _inputs()
    offset = 1.0 if unit_offset else 0.0
    norm = RMSNorm(epsilon=EPS, **rms_scale(unit_offset, "norm"))
    initial = nn.unbox(norm.init(jax.random.key(0), x32))["params"]["scale"]
    np.testing.assert_array_equal(initial, np.full(16, 0.0 if unit_offset else 1.0))
    params = {"params": {"scale": weight32}}
    np.testing.assert_allclose(
        norm.apply(params, x32), _rms_norm64(x, weight, offset), rtol=1e-5, atol=1e-5
    )
    weights = np.random.default_rng(1).normal(size=x.shape)
    grads = jax.grad(
        lambda p, x: jnp.sum(norm.apply({"params": {"scale": p}}, x) * weights), argnums=(0, 1)
    )(weight32, x32)
    loss64 = lambda weight, x: np.sum(_rms_norm64(x, weight, offset) * weights)  # noqa: E731
    for index, grad in enumerate(grads):
        expected = _numeric_gradient(loss64, [weight, x], index)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)


def test_rms_norm_in_bfloat16_computes_in_float32():
    """A bfloat16 input comes out in bfloat16, within one rounding of the float64 value."""
    x, weight, _, _ = _inputs()
    norm = RMSNorm(epsilon=EPS, dtype=jnp.bfloat16, scale_offset=1.0)
    out = norm.apply({"params": {"scale": jnp.asarray(weight)}}, jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    expected = _rms_norm64(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), weight, 1.0)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=2**-8, atol=1e-6)
