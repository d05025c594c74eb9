"""Matrix products that keep low-precision operands on XLA:CPU's fast path.

XLA:CPU multiplies bfloat16 matrices several times faster than float32 ones (AMX, AVX512-BF16)
only when the product accumulates into float32 (`preferred_element_type=float32`). Asked for a
bfloat16 result, it converts both operands to float32 first; and autodiff of an accumulating
product multiplies float32 cotangents by bfloat16 operands, which again runs in float32.

`einsum` gives two low-precision operands on the CPU a product accumulated in float32 and
rounded once to their dtype, forward and backward: a custom VJP whose two gradient products have
the same form. This is the arithmetic GPUs and TPUs do for bfloat16 matmuls; there, and for
float32 operands, it is plain `jnp.einsum`. A bias joins the float32 product before that one
rounding, and its gradient sums float32 values (XLA:CPU splits a bfloat16 sum into a slow tree
of windowed sums). A weight gradient takes its operands in the order that gives the product the
weight's layout, unless that operand is many times the other (the tied embedding's logits): see
`_gradient_product`.
"""

from __future__ import annotations

import functools
import string

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxlm.layers.platform import target_platform

LOW_PRECISION = (jnp.bfloat16, jnp.float16)
PRODUCT, BATCHED_PRODUCT = "matmul", "batched_matmul"  # checkpoint names of `einsum` results
# A weight gradient's result is transposed when copying its operand in the weight's order would
# move this many times more elements than copying the other (XLA:CPU: worth it at 16, not at 4)
TRANSPOSE_RESULT_RATIO = 8


def on_cpu() -> bool:
    """Whether the computation being traced runs on the CPU (`target_platform`)."""
    return target_platform() == "cpu"


def low_precision_on_cpu(*arrays: jax.Array) -> bool:
    """True when the arrays share a 16-bit float dtype and the computation runs on the CPU."""
    dtypes = {jnp.dtype(array.dtype) for array in arrays}
    return len(dtypes) == 1 and dtypes.pop() in LOW_PRECISION and on_cpu()


def einsum(
    spec: str, a: jax.Array, b: jax.Array, preferred_element_type=None, bias=None
) -> jax.Array:
    """`jnp.einsum(spec, a, b, preferred_element_type=...) + bias` for two operands, every index
    of each either in the other operand or in the output (no index summed within one operand),
    and a bias (optional) broadcast over the output's leading axes."""
    if low_precision_on_cpu(a, b):
        dtype = jnp.dtype(preferred_element_type or a.dtype)
        # named for remat policies, which see a custom VJP's result rather than a dot_general
        return checkpoint_name(_accumulating_einsum(spec, dtype, a, b, bias), product_name(spec))
    product = jnp.einsum(spec, a, b, preferred_element_type=preferred_element_type)
    return product if bias is None else product + bias.astype(product.dtype)


def product_name(spec: str) -> str:
    """`BATCHED_PRODUCT` when an index is in both operands and the output, else `PRODUCT`."""
    inputs, out = spec.split("->")
    a_axes, b_axes = inputs.split(",")
    return BATCHED_PRODUCT if set(a_axes) & set(b_axes) & set(out) else PRODUCT


def dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, bias=None
):
    """`jax.lax.dot_general` (+ bias), through `einsum` for low-precision operands on the CPU."""
    if low_precision_on_cpu(lhs, rhs):
        spec = dot_general_spec(lhs.ndim, rhs.ndim, dimension_numbers)
        return einsum(spec, lhs, rhs, preferred_element_type, bias)
    product = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
    )
    return product if bias is None else product + bias.astype(product.dtype)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _accumulating_einsum(spec: str, dtype, a: jax.Array, b: jax.Array, bias) -> jax.Array:
    """The float32-accumulated product (+ bias) rounded once to `dtype`."""
    product = jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    if bias is not None:
        product += bias.astype(jnp.float32)
    return product.astype(dtype)


def _forward(spec, dtype, a, b, bias):
    return _accumulating_einsum(spec, dtype, a, b, bias), (a, b, bias)


def _backward(spec, dtype, residuals, grad):
    a, b, bias = residuals
    inputs, out = spec.split("->")
    a_axes, b_axes = inputs.split(",")
    bias_grad = None
    if bias is not None:
        leading = tuple(range(grad.ndim - bias.ndim))
        bias_grad = jnp.sum(grad.astype(jnp.float32), axis=leading).astype(bias.dtype)
    grad = grad.astype(a.dtype)
    return (
        _gradient_product(out, grad, b_axes, b, a_axes),
        _gradient_product(a_axes, a, out, grad, b_axes),
        bias_grad,
    )


def _gradient_product(x_axes: str, x: jax.Array, y_axes: str, y: jax.Array, out: str):
    """The accumulating product of x and y into `out`'s axes.

    XLA:CPU copies the first operand of a product into a layout with its contracted axes last.
    When these lead both operands (a weight gradient), the operand whose free axes lead `out`
    goes first, so that the product comes out in the weight's layout. Only when that operand is
    `TRANSPOSE_RESULT_RATIO` times the other or more (the logits against the hidden states, for
    the tied embedding) does the other go first: the weight-sized result is then transposed, a
    strided copy that costs several times a plain one per element. The barrier keeps XLA from
    folding that transpose back into the product."""
    contracted = set(x_axes) & set(y_axes) - set(out)

    def leading(axes: str) -> bool:
        return set(axes[: len(contracted)]) == contracted

    if not (leading(x_axes) and leading(y_axes)):
        return _accumulating_einsum(f"{x_axes},{y_axes}->{out}", x.dtype, x, y, None)
    if out[0] not in x_axes:  # x first: the product in the weight's layout
        x_axes, x, y_axes, y = y_axes, y, x_axes, x
    if x.size >= TRANSPOSE_RESULT_RATIO * y.size:  # x too large to copy: y first, transposed
        x_axes, x, y_axes, y = y_axes, y, x_axes, x
    produced = "".join(axis for axis in x_axes + y_axes if axis in out)
    product = _accumulating_einsum(f"{x_axes},{y_axes}->{produced}", x.dtype, x, y, None)
    if produced == out:
        return product
    return jnp.transpose(jax.lax.optimization_barrier(product), list(map(produced.index, out)))


_accumulating_einsum.defvjp(_forward, _backward)
