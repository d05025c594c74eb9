"""Layer normalization with a hand-written backward pass, and RMS normalization.

Autodiff of LayerNorm differentiates the mean and the variance separately: several passes over
the activations, each with its converts from and to the compute dtype. The closed form

    dx = (g s - mean(g s) - x^ mean(g s x^)) / sigma,   ds = sum(g x^),   db = sum(g)

(x^ the normalized input, s the scale) reads the input and the gradient once. Statistics and
both passes are float32; the output and dx have the input's dtype.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


class LayerNorm(nn.Module):
    """Normalize the last axis to zero mean and unit variance, then scale and shift; the
    parameters `scale` and `bias` of `flax.linen.LayerNorm`, each unless `use_scale` /
    `use_bias` is off (then 1 and 0), over the last `scale_axes` axes (2: a scale of its own for
    each head's features)."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    use_scale: bool = True
    use_bias: bool = True
    scale_axes: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-self.scale_axes :]
        scale = jnp.ones(features, self.param_dtype)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = jnp.zeros(features, self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
        return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, in x's dtype."""
    return _forward(x, scale, bias, epsilon)[0]


def _statistics(x32: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(variance + epsilon)


def _forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    mean, inv_std = _statistics(x32, epsilon)
    normalized = (x32 - mean) * inv_std
    y = normalized * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype), (x, mean, inv_std, scale, bias)


def _backward(epsilon, residuals, grad):
    x, mean, inv_std, scale, bias = residuals
    normalized = (x.astype(jnp.float32) - mean) * inv_std
    grad32 = grad.astype(jnp.float32)
    scaled = grad32 * scale.astype(jnp.float32)
    grad_x = inv_std * (
        scaled
        - jnp.mean(scaled, axis=-1, keepdims=True)
        - normalized * jnp.mean(scaled * normalized, axis=-1, keepdims=True)
    )
    rows = tuple(range(x.ndim - scale.ndim))  # the axes the scale and bias are shared over
    return (
        grad_x.astype(x.dtype),
        jnp.sum(grad32 * normalized, axis=rows).astype(scale.dtype),
        jnp.sum(grad32, axis=rows).astype(bias.dtype),
    )


layer_norm.defvjp(_forward, _backward)


class RMSNorm(nn.Module):
    """Divide the last axis (the last `feature_axes` axes together) by its root mean square,
    then scale: x / sqrt(mean(x^2) + epsilon) * (scale_offset + scale), in float32, the output
    in `dtype`. The parameter `scale` (of those axes' shape, or of the last `scale_axes`') is
    `flax.linen.RMSNorm`'s; Gemma's norms scale by 1 + scale (`scale_offset=1`, `scale_init`
    zeros), which keeps weights near 0 as precise in 16-bit parameters as the offset's 1 is
    exact."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scale_offset: float = 0.0
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    feature_axes: int = 1
    use_scale: bool = True  # off: no parameter, the scale 1
    scale_axes: int | None = None  # the scale's axes, the last ones; None: the feature axes

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = tuple(range(-self.feature_axes, 0))
        shape = x.shape[-(self.scale_axes or self.feature_axes) :]
        scale = jnp.full(shape, 1.0 - self.scale_offset, self.param_dtype)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, shape, self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean_square = jnp.mean(jnp.square(x32), axis=features, keepdims=True)
        inv_rms = jax.lax.rsqrt(mean_square + self.epsilon)
        y = x32 * inv_rms * (self.scale_offset + scale.astype(jnp.float32))
        return y.astype(self.dtype)


def rms_scale(unit_offset: bool, *axes: str) -> dict:
    """`RMSNorm` settings of a scale whose features have the logical axis names `axes`: from 1,
    or from 0 and offset by 1 (`unit_offset`)."""
    init = nn.initializers.zeros if unit_offset else nn.initializers.ones
    return {
        "scale_offset": 1.0 if unit_offset else 0.0,
        "scale_init": nn.with_logical_partitioning(init, axes),
    }
