"""A dense layer over several input and output axes whose weights carry logical axis names."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.matmul import dot_general


class DenseGeneral(nn.Module):
    """y = x . W + b contracting the last `len(kernel_axes) - len(features)` axes of x.

    The kernel is created in its final shape (in_dims + features) so that its logical axis
    names `kernel_axes` always match its rank.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    output_dtype: jnp.dtype | None = None  # the product's dtype when not `dtype` (float32 logits)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.kernel_axes) - len(self.features)
        kernel_shape = x.shape[-n_in:] + tuple(self.features)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            kernel_shape,
            self.param_dtype,
        )
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[n_in:]),
                tuple(self.features),
                self.param_dtype,
            )
        return dot_general(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (contract, ((), ())),
            preferred_element_type=self.output_dtype,
            bias=bias,
        )
