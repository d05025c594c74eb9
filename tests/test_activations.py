"""jaxlm.layers.activations: GELU (tanh) and its hand-written derivative against float64 NumPy
and against autodiff of jax.nn.gelu."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.layers.activations import gelu_tanh


def _gelu64(x):
    inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
    return 0.5 * x * (1 + np.tanh(inner))


def _gelu_slope64(x, h=1e-6):
    return (_gelu64(x + h) - _gelu64(x - h)) / (2 * h)  # central difference in float64


X = np.concatenate([np.linspace(-8, 8, 401), np.random.default_rng(0).normal(size=600) * 3])


def test_value_and_derivative_match_float64():
    x = jnp.asarray(X, jnp.float32)
    np.testing.assert_allclose(gelu_tanh(x), _gelu64(X), rtol=1e-6, atol=1e-6)
    slope = jax.vmap(jax.grad(gelu_tanh))(x)
    # atol: in the far negative tail 1 + tanh cancels in float32 (as in jax.nn.gelu)
    np.testing.assert_allclose(slope, _gelu_slope64(X), rtol=1e-5, atol=1e-5)


def test_matches_autodiff_of_jax_gelu():
    x = jnp.asarray(X, jnp.float32)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=X.shape), jnp.float32)

    def loss(activation):
        return lambda x: jnp.sum(activation(x) * weights)

    reference = jax.grad(loss(lambda x: jax.nn.gelu(x, approximate=True)))(x)
    np.testing.assert_allclose(jax.grad(loss(gelu_tanh))(x), reference, rtol=1e-5, atol=1e-5)


def test_bfloat16_is_computed_in_float32_and_rounded_once():
    x = jnp.asarray(X, jnp.bfloat16)
    x64 = np.asarray(x, np.float64)
    out = gelu_tanh(x)
    assert out.dtype == jnp.bfloat16
    in_float32 = gelu_tanh(x.astype(jnp.float32))
    np.testing.assert_array_equal(out, in_float32.astype(jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(out, np.float64), _gelu64(x64), rtol=2**-8, atol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(gelu_tanh(x).astype(jnp.float32)))(x)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grad, np.float64), _gelu_slope64(x64), atol=2**-8 * 1.2)
