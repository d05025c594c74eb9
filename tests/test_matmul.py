"""jaxlm.layers.matmul: low-precision products accumulated in float32, forward and backward,
checked against float64 NumPy; float32 operands take lax.dot_general unchanged."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from jaxlm.layers.matmul import dot_general, dot_general_spec, einsum
from jaxlm.layers.platform import tracing_for

BF16_EPS = 2.0**-8  # bfloat16 keeps 8 significant bits

DIMENSION_NUMBERS = [
    # (lhs shape, rhs shape, ((lhs contract, rhs contract), (lhs batch, rhs batch)))
    ((6, 5), (5, 3), (((1,), (0,)), ((), ()))),  # Dense
    ((2, 4, 5), (5, 3, 2), (((2,), (0,)), ((), ()))),  # query projection to heads
    ((2, 4, 3, 2), (3, 2, 5), (((2, 3), (0, 1)), ((), ()))),  # attention output projection
    ((2, 3, 4, 5), (2, 3, 6, 5), (((3,), (3,)), ((0, 1), (0, 1)))),  # q . k, batched
    ((5, 6), (5, 3), (((0,), (0,)), ((), ()))),  # a weight gradient
]


def _rounded(shape, seed):
    """float64 values exactly representable in bfloat16, and the bfloat16 array."""
    x = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.bfloat16)
    return np.asarray(x, np.float64), x


@pytest.mark.parametrize(("lhs_shape", "rhs_shape", "dims"), DIMENSION_NUMBERS)
def test_spec_matches_dot_general(lhs_shape, rhs_shape, dims):
    rng = np.random.default_rng(0)
    lhs, rhs = rng.normal(size=lhs_shape), rng.normal(size=rhs_shape)
    spec = dot_general_spec(len(lhs_shape), len(rhs_shape), dims)
    expected = jax.lax.dot_general(jnp.asarray(lhs), jnp.asarray(rhs), dims)
    np.testing.assert_allclose(np.einsum(spec, lhs, rhs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("lhs_shape", "rhs_shape", "dims"), DIMENSION_NUMBERS)
def test_bfloat16_product_and_gradients_match_float64(lhs_shape, rhs_shape, dims):
    (a64, a), (b64, b) = _rounded(lhs_shape, 1), _rounded(rhs_shape, 2)
    spec = dot_general_spec(len(lhs_shape), len(rhs_shape), dims)
    out = dot_general(a, b, dims)
    assert out.dtype == jnp.bfloat16
    expected = np.einsum(spec, a64, b64)
    # accumulated in float32, rounded once: within one rounding of the exact product
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=BF16_EPS, atol=1e-6)

    weights = np.random.default_rng(3).normal(size=expected.shape)
    grad_a, grad_b = jax.grad(
        lambda a, b: jnp.sum(dot_general(a, b, dims).astype(jnp.float32) * weights), (0, 1)
    )(a, b)
    inputs, out_axes = spec.split("->")
    a_axes, b_axes = inputs.split(",")
    expected_a = np.einsum(f"{out_axes},{b_axes}->{a_axes}", weights, b64)
    expected_b = np.einsum(f"{a_axes},{out_axes}->{b_axes}", a64, weights)
    # the cotangent is rounded to bfloat16 before each product: two roundings
    for grad, expected in ((grad_a, expected_a), (grad_b, expected_b)):
        assert grad.dtype == jnp.bfloat16
        atol = 3 * BF16_EPS * np.abs(expected).max()
        np.testing.assert_allclose(np.asarray(grad, np.float64), expected, atol=atol)


def _dot_generals(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for param in eqn.params.values():
            if isinstance(param, jax.extend.core.ClosedJaxpr):
                yield from _dot_generals(param.jaxpr)
            elif isinstance(param, jax.extend.core.Jaxpr):
                yield from _dot_generals(param)


def test_every_product_of_the_gradient_takes_bfloat16_and_accumulates_in_float32():
    """What XLA:CPU multiplies fast: two bfloat16 operands into a float32 result. Plain autodiff
    of such a product would multiply a float32 cotangent instead."""
    _, a = _rounded((8, 16), 0)
    _, b = _rounded((16, 4), 1)
    jaxpr = jax.make_jaxpr(
        jax.grad(lambda a, b: jnp.sum(einsum("mk,kn->mn", a, b).astype(jnp.float32)), (0, 1))
    )(a, b)
    products = list(_dot_generals(jaxpr.jaxpr))
    assert len(products) == 3  # forward, and one for each operand's gradient
    for eqn in products:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2
        assert eqn.outvars[0].aval.dtype == jnp.float32


@pytest.mark.parametrize(
    "k, n, operands, transposed",
    [
        (32, 8, [(64, 32), (64, 8)], False),  # x 4 times the cotangent: x first, w's layout
        (128, 8, [(64, 8), (64, 128)], True),  # 16 times (the tied head): the cotangent first
    ],
)
def test_a_weight_gradient_takes_its_operands_in_the_order_that_copies_less(
    k, n, operands, transposed
):
    """XLA:CPU copies the first operand of a product into a layout with its contracted axes
    last. For x [m, k] and a cotangent [m, n], x first gives w's [k, n] layout directly; the
    cotangent goes first, and the [n, k] product is transposed, only when x is at least 8 times
    the cotangent."""
    x64, x = _rounded((64, k), 0)
    _, w = _rounded((k, n), 1)
    grad = jax.grad(lambda w: jnp.sum(einsum("mk,kn->mn", x, w).astype(jnp.float32)))
    *_, weight_gradient = _dot_generals(jax.make_jaxpr(grad)(w).jaxpr)
    assert [v.aval.shape for v in weight_gradient.invars] == operands
    assert weight_gradient.outvars[0].aval.shape == ((n, k) if transposed else (k, n))
    expected = x64.T @ np.ones((64, n))
    np.testing.assert_allclose(np.asarray(grad(w), np.float64), expected, rtol=BF16_EPS)


def test_bfloat16_product_into_float32_is_never_rounded():
    """preferred_element_type=float32 (logits): accumulated in float32 and returned as is."""
    (a64, a), (b64, b) = _rounded((16, 64), 0), _rounded((64, 32), 1)
    out = einsum("mk,kn->mn", a, b, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    expected = a64 @ b64
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5, atol=1e-5)
    rounded = np.asarray(jnp.asarray(expected, jnp.bfloat16), np.float64)
    assert np.abs(rounded - expected).max() > 100 * np.abs(np.asarray(out) - expected).max()

    weights = np.random.default_rng(2).normal(size=expected.shape)
    grad_a = jax.grad(
        lambda a: jnp.sum(einsum("mk,kn->mn", a, b, preferred_element_type=jnp.float32) * weights)
    )(a)
    assert grad_a.dtype == jnp.bfloat16
    expected_a = weights @ b64.T
    atol = 3 * BF16_EPS * np.abs(expected_a).max()
    np.testing.assert_allclose(np.asarray(grad_a, np.float64), expected_a, atol=atol)


def test_float32_operands_take_lax_dot_general_unchanged():
    rng = np.random.default_rng(0)
    lhs, rhs = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 4, 5), (5, 3, 2)))
    dims = (((2,), (0,)), ((), ()))
    jaxpr = jax.make_jaxpr(lambda a, b: dot_general(a, b, dims))(lhs, rhs)
    assert [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns] == ["dot_general"]
    np.testing.assert_array_equal(dot_general(lhs, rhs, dims), jax.lax.dot_general(lhs, rhs, dims))


def test_traced_for_another_platform_bfloat16_operands_take_lax_dot_general_unchanged():
    _, a = _rounded((8, 16), 0)
    _, b = _rounded((16, 4), 1)

    def product(a, b):
        return einsum("mk,kn->mn", a, b)

    assert "custom_vjp_call" in str(jax.make_jaxpr(product)(a, b))  # the CPU's fast path
    for platform in ("tpu", "cuda"):
        with tracing_for(platform):
            jaxpr = jax.make_jaxpr(product)(a, b)
        assert [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns] == ["dot_general"]
        assert jaxpr.jaxpr.eqns[0].outvars[0].aval.dtype == jnp.bfloat16


def test_bfloat16_bias_joins_the_float32_product_and_its_gradient_sums_float32_values():
    """The bias is added before the one rounding; XLA:CPU splits a bfloat16 sum into a slow tree
    of windowed sums: the bias gradient must sum float32 values."""
    (x64, x), (w64, w) = _rounded((512, 8), 0), _rounded((8, 3), 1)
    bias = jnp.asarray([0.1, -1.0, 2.0], jnp.float32)
    out = einsum("mk,kn->mn", x, w, bias=bias)
    assert out.dtype == jnp.bfloat16
    expected = x64 @ w64 + np.asarray(bias, np.float64)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=BF16_EPS, atol=1e-6)

    weights = np.random.default_rng(1).normal(size=expected.shape)

    def loss(bias):
        return jnp.sum(einsum("mk,kn->mn", x, w, bias=bias).astype(jnp.float32) * weights)

    sums = [e for e in jax.make_jaxpr(jax.grad(loss))(bias).jaxpr.eqns if "reduce" in str(e)]
    assert sums and all(e.invars[0].aval.dtype == jnp.float32 for e in sums)
    # the cotangent of a bfloat16 output is bfloat16: the sum of the rounded weights
    rounded = np.asarray(jnp.asarray(weights, jnp.bfloat16), np.float64)
    np.testing.assert_allclose(jax.grad(loss)(bias), rounded.sum(0), rtol=1e-5)


def test_float32_bias_is_added_after_the_product():
    rng = np.random.default_rng(0)
    x, w, bias = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((4, 5), (5, 3), (3,)))
    dims = (((1,), (0,)), ((), ()))
    np.testing.assert_array_equal(dot_general(x, w, dims, bias=bias), x @ w + bias)


@pytest.mark.parametrize(
    ("policy", "saved"), [("dots", {(8, 16), (2, 4, 4)}), ("dots_no_batch", {(8, 16)})]
)
def test_remat_policies_save_the_low_precision_products(policy, saved, capsys):
    """`model.remat_policy` dots / dots_no_batch keep saving products that reach XLA through
    the custom VJP (batched: attention's q.k)."""
    from jaxlm.layers.transformer import REMAT_POLICIES

    _, x = _rounded((8, 16), 0)
    _, w = _rounded((16, 16), 1)

    def block(x, w):
        h = jnp.tanh(einsum("mk,kn->mn", x, w))
        heads = h.reshape(2, 4, 16)
        scores = jnp.tanh(einsum("bqd,bkd->bqk", heads, heads))
        return jnp.sum(scores.astype(jnp.float32)) + jnp.sum(h.astype(jnp.float32))

    print_saved_residuals(jax.checkpoint(block, policy=REMAT_POLICIES[policy]), x, w)
    named = [line for line in capsys.readouterr().out.splitlines() if "named" in line]
    shapes = {re.search(r"\[([\d,]+)\]", line)[1] for line in named}
    assert shapes == {",".join(map(str, shape)) for shape in saved}
