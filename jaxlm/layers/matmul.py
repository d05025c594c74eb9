"""Matrix products that keep low-precision operands on XLA:CPU's fast path.

XLA:CPU multiplies bfloat16 matrices several times faster than float32 ones (AMX, AVX512-BF16)
only when the product accumulates into float32 (`preferred_element_type=float32`). Asked for a
bfloat16 result, it converts both operands to float32 first; and autodiff of an accumulating
product multiplies float32 cotangents by bfloat16 operands, which again runs in float32.

`einsum` gives two low-precision operands on the CPU a product accumulated in float32 and
rounded once to their dtype, forward and backward: a custom VJP whose two gradient products have
the same form. This is the arithmetic GPUs and TPUs do for bfloat16 matmuls; there, and for
float32 operands, it is plain `jnp.einsum`. `add_bias` likewise adds a bias in float32 there, so
that the bias gradient sums float32 values (XLA:CPU splits a bfloat16 sum into a slow tree of
windowed sums).
"""

from __future__ import annotations

import functools
import string

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

LOW_PRECISION = (jnp.bfloat16, jnp.float16)
PRODUCT, BATCHED_PRODUCT = "matmul", "batched_matmul"  # checkpoint names of `einsum` results


def low_precision_on_cpu(*arrays: jax.Array) -> bool:
    """True when the arrays share a 16-bit float dtype and the computation runs on the CPU."""
    dtypes = {jnp.dtype(array.dtype) for array in arrays}
    return len(dtypes) == 1 and dtypes.pop() in LOW_PRECISION and jax.default_backend() == "cpu"


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, a, b)` for two operands, every index of each either in the other
    operand or in the output (no index summed within one operand)."""
    if low_precision_on_cpu(a, b):
        # named for remat policies, which see a custom VJP's result rather than a dot_general
        return checkpoint_name(_accumulating_einsum(spec, a, b), product_name(spec))
    return jnp.einsum(spec, a, b)


def product_name(spec: str) -> str:
    """`BATCHED_PRODUCT` when an index is in both operands and the output, else `PRODUCT`."""
    inputs, out = spec.split("->")
    a_axes, b_axes = inputs.split(",")
    return BATCHED_PRODUCT if set(a_axes) & set(b_axes) & set(out) else PRODUCT


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias (broadcast over y's leading axes) in y's dtype."""
    if low_precision_on_cpu(y):
        return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(y.dtype)
    return y + bias.astype(y.dtype)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`jax.lax.dot_general`, through `einsum` for low-precision operands on the CPU."""
    if not low_precision_on_cpu(lhs, rhs):
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        )
    out = einsum(dot_general_spec(lhs.ndim, rhs.ndim, dimension_numbers), lhs, rhs)
    return out if preferred_element_type is None else out.astype(preferred_element_type)


def dot_general_spec(lhs_ndim: int, rhs_ndim: int, dimension_numbers) -> str:
    """The einsum spec of a dot_general: output axes are batch, then lhs free, then rhs free."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    letters = iter(string.ascii_letters)
    lhs = [next(letters) for _ in range(lhs_ndim)]
    rhs = [None] * rhs_ndim
    for i, j in zip((*lhs_contract, *lhs_batch), (*rhs_contract, *rhs_batch), strict=True):
        rhs[j] = lhs[i]
    rhs = [axis or next(letters) for axis in rhs]
    shared_lhs, shared_rhs = {*lhs_contract, *lhs_batch}, {*rhs_contract, *rhs_batch}
    out = (
        [lhs[i] for i in lhs_batch]
        + [axis for i, axis in enumerate(lhs) if i not in shared_lhs]
        + [axis for i, axis in enumerate(rhs) if i not in shared_rhs]
    )
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _accumulating_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _forward(spec, a, b):
    return _accumulating_einsum(spec, a, b), (a, b)


def _backward(spec, residuals, grad):
    a, b = residuals
    inputs, out = spec.split("->")
    a_axes, b_axes = inputs.split(",")
    grad = grad.astype(a.dtype)
    return (
        _accumulating_einsum(f"{out},{b_axes}->{a_axes}", grad, b),
        _accumulating_einsum(f"{a_axes},{out}->{b_axes}", a, grad),
    )


_accumulating_einsum.defvjp(_forward, _backward)
