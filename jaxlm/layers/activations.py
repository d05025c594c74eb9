"""Activation functions of the feed-forward block.

`gelu_tanh` is GPT-2's tanh approximation of GELU with a hand-written derivative: autodiff of
the formula saves its intermediate values and sums several float32 cotangent terms; the
derivative in closed form reads only the input, in one elementwise pass. Both passes compute in
float32 and return the input's dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_CUBIC = 0.044715


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return _gelu_tanh_forward(x)[0]


def _float32_and_tanh(x):
    x32 = x.astype(jnp.float32)
    return x32, jnp.tanh(_SQRT_2_OVER_PI * (x32 + _CUBIC * x32**3))


def _gelu_tanh_forward(x):
    x32, tanh = _float32_and_tanh(x)
    return (0.5 * x32 * (1 + tanh)).astype(x.dtype), x


def _gelu_tanh_backward(x, grad):
    x32, tanh = _float32_and_tanh(x)
    slope = 0.5 * (1 + tanh) + 0.5 * x32 * (1 - tanh**2) * _SQRT_2_OVER_PI * (
        1 + 3 * _CUBIC * x32**2
    )
    return ((grad.astype(jnp.float32) * slope).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_tanh_forward, _gelu_tanh_backward)

ACTIVATIONS = {
    "gelu": gelu_tanh,  # GPT-2
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # BERT
    "relu": jax.nn.relu,  # the original Transformer
    "silu": jax.nn.silu,
}
