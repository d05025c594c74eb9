"""Attention masks, scaled dot-product attention and multi-head attention against NumPy."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlm.layers.attention as attention_module
from jaxlm.layers.alibi import AlibiBias
from jaxlm.layers.attention import dot_product_attention, reference_attention
from jaxlm.layers.embeddings import apply_rotary
from jaxlm.layers.masks import (
    SegmentMask,
    attention_mask,
    causal_mask,
    one_document_per_row,
    padding_mask,
    segment_mask,
)
from jaxlm.layers.multi_head_attention import MultiHeadAttention
from jaxlm.layers.recomputing_attention import recomputing_causal_attention

TOL = dict(rtol=1e-5, atol=1e-5)


def np_attention(query, key, value, mask=None, bias=None, scale=None, softcap=None):
    """softmax(cap(q k^T * scale) + bias) v in float64 (scale 1 / sqrt(d) by default, cap(s) =
    softcap tanh(s / softcap)), kv heads repeated for grouped-query attention."""
    query, key, value = (np.asarray(t, np.float64) for t in (query, key, value))
    group = query.shape[2] // key.shape[2]
    key, value = np.repeat(key, group, axis=2), np.repeat(value, group, axis=2)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", query, key) * scale
    if softcap is not None:
        logits = softcap * np.tanh(logits / softcap)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    with np.errstate(invalid="ignore"):  # rows with no key at all become NaN
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, value)


def np_rotary(x, positions, base=10_000.0):
    """Rotate pairs (i, i + d/2) by positions * base^(-i / (d/2)), in float64."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    angles = np.asarray(positions, np.float64)[..., None] * base ** (-np.arange(half) / half)
    cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def random_qkv(rng, batch=2, q_len=5, k_len=7, heads=4, kv_heads=4, head_dim=8):
    query = rng.normal(size=(batch, q_len, heads, head_dim)).astype(np.float32)
    key = rng.normal(size=(batch, k_len, kv_heads, head_dim)).astype(np.float32)
    value = rng.normal(size=(batch, k_len, kv_heads, head_dim)).astype(np.float32)
    return query, key, value


def random_mask(rng, shape):
    """A random boolean mask in which every query row keeps at least one key."""
    mask = rng.random(shape) < 0.6
    mask[..., 0] = True
    return mask


# --- masks against naive loops ------------------------------------------------------------


def test_causal_mask():
    length = 6
    mask = np.asarray(causal_mask(length))
    assert mask.shape == (1, 1, length, length) and mask.dtype == bool
    for q in range(length):
        for k in range(length):
            assert mask[0, 0, q, k] == (k <= q)


def test_padding_mask():
    rng = np.random.default_rng(0)
    query_valid, key_valid = rng.random((3, 4)) < 0.7, rng.random((3, 6)) < 0.7
    mask = np.asarray(padding_mask(jnp.asarray(query_valid), jnp.asarray(key_valid)))
    assert mask.shape == (3, 1, 4, 6)
    for b in range(3):
        for q in range(4):
            for k in range(6):
                assert mask[b, 0, q, k] == (query_valid[b, q] and key_valid[b, k])


def test_segment_mask():
    query_segments = np.array([[1, 1, 2, 2, 0], [1, 2, 3, 3, 3]])
    key_segments = np.array([[1, 2, 2, 0, 0, 1], [3, 3, 1, 2, 0, 0]])
    mask = np.asarray(segment_mask(jnp.asarray(query_segments), jnp.asarray(key_segments)))
    assert mask.shape == (2, 1, 5, 6)
    for b in range(2):
        for q in range(5):
            for k in range(6):
                assert mask[b, 0, q, k] == (query_segments[b, q] == key_segments[b, k])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_mask(causal):
    segments = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 0], [0, 0, 1, 1, 1, 1, 1]])
    mask = np.asarray(attention_mask(jnp.asarray(segments), jnp.asarray(segments), causal=causal))
    assert mask.shape == (3, 1, 7, 7)
    for b in range(3):
        for q in range(7):
            for k in range(7):
                same = segments[b, q] == segments[b, k]
                real = segments[b, q] != 0 and segments[b, k] != 0
                assert mask[b, 0, q, k] == (same and real and (k <= q or not causal))


def test_attention_mask_cross():
    """Queries and keys of different lengths (cross-attention): same non-padding segment."""
    query_segments = np.array([[1, 1, 2, 0], [1, 1, 1, 1]])
    key_segments = np.array([[1, 2, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0]])
    mask = np.asarray(
        attention_mask(jnp.asarray(query_segments), jnp.asarray(key_segments), causal=False)
    )
    assert mask.shape == (2, 1, 4, 6)
    for b in range(2):
        for q in range(4):
            for k in range(6):
                same = query_segments[b, q] == key_segments[b, k]
                assert mask[b, 0, q, k] == (same and key_segments[b, k] != 0)


# --- scaled dot-product attention ---------------------------------------------------------


# Jitted: one compilation per shape instead of one per primitive.
attend = jax.jit(dot_product_attention, static_argnames=("backend", "dropout_rate"))
ATTENTION_FNS = {
    "reference_attention": jax.jit(reference_attention),
    "jax": functools.partial(attend, backend="jax"),
}


@pytest.mark.parametrize("fn", list(ATTENTION_FNS))
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_heads", [None, 1, 4])
def test_attention_matches_numpy(fn, kv_heads, mask_heads):
    """Random inputs, multi-head and grouped-query, no mask / a shared mask / a per-head mask."""
    rng = np.random.default_rng(kv_heads * 10 + (mask_heads or 0))
    query, key, value = random_qkv(rng, kv_heads=kv_heads)
    mask = None if mask_heads is None else random_mask(rng, (2, mask_heads, 5, 7))
    out = ATTENTION_FNS[fn](query, key, value, None if mask is None else jnp.asarray(mask))
    assert out.shape == query.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, np_attention(query, key, value, mask), **TOL)


@pytest.mark.parametrize("backend", ["reference", "jax"])
@pytest.mark.parametrize("length", [6, 150])  # on the CPU, 150 causal queries take 3 blocks
def test_attention_adds_a_bias_under_any_mask(backend, length):
    """A [batch, heads, q, k] bias (T5's relative positions) with grouped-query heads, under a
    dense mask and a causal SegmentMask of two segments."""
    rng = np.random.default_rng(length)
    query, key, value = random_qkv(rng, q_len=length, k_len=length, kv_heads=2)
    bias = rng.normal(size=(2, 4, length, length)).astype(np.float32)
    segments = jnp.asarray(np.repeat([[1, 2], [1, 1]], [length // 2, length - length // 2], 1))
    dense = random_mask(rng, (2, 1, length, length))
    for mask in (jnp.asarray(dense), SegmentMask(segments, segments, causal=True)):
        out = attend(query, key, value, mask, bias=jnp.asarray(bias), backend=backend)
        expected_mask = mask.dense() if isinstance(mask, SegmentMask) else mask
        want = np_attention(query, key, value, np.asarray(expected_mask), bias)
        np.testing.assert_allclose(out, want, **TOL)


@pytest.mark.parametrize("backend", ["reference", "jax"])
def test_attention_causal_and_segment_masks(backend):
    """causal_mask (broadcast over the batch), attention_mask for self-attention, and the same
    as a SegmentMask (which jax.nn.dot_product_attention takes as is_causal plus a segment mask)."""
    rng = np.random.default_rng(1)
    query, key, value = random_qkv(rng, q_len=6, k_len=6, kv_heads=2)
    segments = jnp.asarray([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1]])
    for mask in (
        causal_mask(6),
        attention_mask(segments, segments, causal=True),
        SegmentMask(segments, segments, causal=True),
    ):
        out = attend(query, key, value, mask, backend=backend)
        expected_mask = mask.dense() if isinstance(mask, SegmentMask) else mask
        np.testing.assert_allclose(
            out, np_attention(query, key, value, np.asarray(expected_mask)), **TOL
        )


@pytest.mark.parametrize("backend", ["reference", "jax"])
@pytest.mark.parametrize("segmented", [False, True])
def test_a_sliding_window_keeps_the_last_keys_of_each_query(backend, segmented):
    """Window 3 over 130 tokens (past the CPU path's first query block), with or without two
    packed documents: each query sees itself and the two keys before it in its document, as
    a naive loop has it, and attention matches float64 NumPy under that mask."""
    rng = np.random.default_rng(7)
    length, window = 130, 3
    query, key, value = random_qkv(rng, batch=1, q_len=length, k_len=length, kv_heads=2)
    segments = np.ones((1, length), np.int32)
    if segmented:
        segments[0, 70:] = 2
        mask = SegmentMask(jnp.asarray(segments), jnp.asarray(segments), causal=True, window=3)
    else:
        mask = one_document_per_row(length, window)
    naive = np.zeros((1, 1, length, length), bool)
    for q in range(length):
        for k in range(length):
            naive[0, 0, q, k] = 0 <= q - k < window and segments[0, q] == segments[0, k]
    np.testing.assert_array_equal(mask.dense(), naive)
    out = attend(query, key, value, mask, backend=backend)
    np.testing.assert_allclose(out, np_attention(query, key, value, naive), **TOL)


@pytest.mark.parametrize("backend", ["reference", "jax"])
def test_one_document_per_row_is_the_causal_mask(backend):
    """Without segment ids the mask is the lower triangle and attention matches float64 NumPy
    under it."""
    rng = np.random.default_rng(5)
    query, key, value = random_qkv(rng, q_len=6, k_len=6, kv_heads=2)
    mask = one_document_per_row(6)
    lower = np.tril(np.ones((6, 6), bool))[None, None]
    np.testing.assert_array_equal(mask.dense(), lower)
    out = attend(query, key, value, mask, backend=backend)
    np.testing.assert_allclose(out, np_attention(query, key, value, lower), **TOL)


def test_one_document_per_row_passes_no_dense_mask(monkeypatch):
    """What the 'jax' and 'cudnn' backends hand to jax.nn.dot_product_attention (not jitted, so
    that every call traces)."""
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(
        jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw)
    )
    query, key, value = random_qkv(np.random.default_rng(6), q_len=6, k_len=6)
    segments = jnp.ones((2, 6), jnp.int32)
    dot_product_attention(query, key, value, one_document_per_row(6), backend="jax")
    dot_product_attention(
        query, key, value, SegmentMask(segments, segments, causal=True), backend="jax"
    )
    assert calls[0]["mask"] is None and calls[0]["is_causal"]
    assert calls[1]["mask"].shape == (2, 1, 6, 6) and calls[1]["is_causal"]


def spy_on_key_lengths(monkeypatch) -> list[int]:
    """The key lengths of every call of the reference attention from `dot_product_attention`."""
    seen, real = [], attention_module.reference_attention

    def spy(query, key, value, mask=None, **kwargs):
        seen.append(key.shape[1])
        return real(query, key, value, mask, **kwargs)

    monkeypatch.setattr(attention_module, "reference_attention", spy)
    return seen


@pytest.mark.parametrize("length, key_lengths", [(100, [64, 100]), (300, [128, 256, 300])])
def test_causal_attention_skips_the_key_blocks_above_the_diagonal(monkeypatch, length, key_lengths):
    """The reference backend runs causal self-attention in query blocks, each against the keys up
    to its last query; packed and padded rows (grouped-query heads) still match float64 NumPy."""
    seen = spy_on_key_lengths(monkeypatch)
    rng = np.random.default_rng(7)
    query, key, value = random_qkv(rng, q_len=length, k_len=length, kv_heads=2)
    segments = np.ones((2, length), np.int32)
    segments[0, 40:] = 2
    segments[0, length - 10 :] = 0  # padding
    mask = SegmentMask(jnp.asarray(segments), jnp.asarray(segments), causal=True)
    out = dot_product_attention(query, key, value, mask, backend="reference")
    assert seen == key_lengths
    same_document = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] != 0)
    lower = np.tril(np.ones((length, length), bool))
    real_rows = segments[:, :, None, None] != 0  # padding rows attend to nothing: left out
    expected = np_attention(query, key, value, (same_document & lower)[:, None])
    np.testing.assert_allclose(np.where(real_rows, out, 0), np.where(real_rows, expected, 0), **TOL)


def test_causal_attention_is_one_block_off_the_cpu(monkeypatch):
    """On GPUs and TPUs (which have flash kernels for causal masks) the reference stays whole."""
    seen = spy_on_key_lengths(monkeypatch)
    monkeypatch.setattr(attention_module, "on_cpu", lambda: False)
    query, key, value = random_qkv(np.random.default_rng(10), q_len=100, k_len=100)
    dot_product_attention(query, key, value, one_document_per_row(100), backend="reference")
    assert seen == [100]


def test_causal_blocks_have_the_gradients_of_one_block():
    """Gradients of the blocked causal attention equal those of one pass under the whole mask."""
    query, key, value = random_qkv(np.random.default_rng(8), q_len=100, k_len=100, kv_heads=2)
    cotangent = np.random.default_rng(9).normal(size=query.shape).astype(np.float32)

    def grads(attention):
        loss = lambda *qkv: jnp.sum(attention(*qkv) * cotangent)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(query, key, value)

    blocked = grads(
        lambda q, k, v: dot_product_attention(
            q, k, v, one_document_per_row(100), backend="reference"
        )
    )
    whole = grads(lambda q, k, v: reference_attention(q, k, v, causal_mask(100)))
    for got, want in zip(blocked, whole, strict=True):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("length", [40, 300])  # the blocks' path, and the recomputing one's
@pytest.mark.parametrize("scale, softcap", [(0.1, None), (None, 2.0), (0.6, 1.5)])
def test_scaled_and_capped_causal_attention_matches_float64(length, scale, softcap, monkeypatch):
    """Gemma 2's score factor (query_pre_attn_scalar^-0.5) and tanh cap of the scores, on the
    CPU's causal paths (the recomputing one takes no cap: a capped input takes the blocks') and
    on the dense reference, against float64; gradients as autodiff of the dense reference."""
    monkeypatch.setattr(attention_module, "RECOMPUTE_FROM_LENGTH", 256)
    query, key, value = random_qkv(
        np.random.default_rng(21), q_len=length, k_len=length, kv_heads=2
    )
    query = query * 3  # scores well beyond the caps
    options = dict(scale=scale, softcap=softcap)
    expected = np_attention(query, key, value, np.asarray(causal_mask(length)), **options)
    mask = one_document_per_row(length)
    causal = functools.partial(dot_product_attention, mask=mask, backend="reference", **options)
    dense = functools.partial(reference_attention, mask=causal_mask(length), **options)
    for attention in (causal, dense):
        np.testing.assert_allclose(attention(query, key, value), expected, rtol=2e-5, atol=2e-5)
    cotangent = np.random.default_rng(22).normal(size=query.shape).astype(np.float32)

    def grads(attention):
        loss = lambda *qkv: jnp.sum(attention(*qkv) * cotangent)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(query, key, value)

    for got, want in zip(grads(causal), grads(dense), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


def test_capped_scores_on_auto_take_the_reference_and_jax_refuses_them(monkeypatch):
    """`jax.nn.dot_product_attention` (and cuDNN) cannot cap scores: 'auto' on a GPU then takes
    the reference, and naming 'jax' is an error."""
    monkeypatch.setattr(attention_module, "target_platform", lambda: "gpu")
    assert attention_module.resolve_backend("auto", jnp.bfloat16) == "cudnn"
    assert attention_module.resolve_backend("auto", jnp.bfloat16, softcap=50.0) == "reference"
    query, key, value = random_qkv(np.random.default_rng(3))
    with pytest.raises(ValueError, match="capped attention scores are not supported by the 'jax'"):
        dot_product_attention(query, key, value, backend="jax", softcap=5.0)


def packed_padded_causal_mask(batch: int, length: int) -> tuple[np.ndarray, SegmentMask]:
    """Segment ids of two documents in row 0 (then padding), one in the others, and their mask."""
    segments = np.ones((batch, length), np.int32)
    segments[0, length // 3 :] = 2
    segments[0, length - 20 :] = 0
    return segments, SegmentMask(jnp.asarray(segments), jnp.asarray(segments), causal=True)


def document_positions(segments: np.ndarray) -> np.ndarray:
    """Positions from 0 at the start of each document (each run of one segment id) of a row."""
    starts = np.concatenate([np.ones_like(segments[:, :1]), segments[:, 1:] != segments[:, :-1]], 1)
    index = np.arange(segments.shape[1])
    return index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)


@pytest.mark.parametrize("alibi", [False, True], ids=["", "alibi"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (jnp.bfloat16, 2e-2)])
def test_recomputing_attention_matches_numpy_and_autodiff(dtype, tol, alibi):
    """The long-sequence path (probabilities recomputed in the backward pass) on packed, padded
    rows, grouped-query heads and a last block shorter than the others, with or without ALiBi's
    biases (computed per block from each document's positions): outputs as float64 NumPy, and
    gradients (padding rows included) as autodiff of the reference attention with the biases
    built."""
    length, block = 300, 128
    query, key, value = random_qkv(
        np.random.default_rng(11), q_len=length, k_len=length, kv_heads=2
    )
    query, key, value = (
        np.asarray(jnp.asarray(t, dtype).astype(np.float32)) for t in (query, key, value)
    )
    cotangent = np.random.default_rng(12).normal(size=query.shape).astype(np.float32)
    segments, mask = packed_padded_causal_mask(2, length)
    dense = mask.dense()
    positions = jnp.asarray(document_positions(segments))
    bias = AlibiBias(positions, positions, query.shape[2]) if alibi else None
    dense_bias = None if bias is None else bias.dense()

    def grads(attention):
        loss = lambda *qkv: jnp.sum(attention(*qkv).astype(jnp.float32) * cotangent)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
            *(jnp.asarray(t, dtype) for t in (query, key, value))
        )

    def recomputing(q, k, v):
        return recomputing_causal_attention(q, k, v, dense, block, alibi=bias)

    out = recomputing(*(jnp.asarray(t, dtype) for t in (query, key, value)))
    real_rows = segments[:, :, None, None] != 0
    expected = np_attention(query, key, value, np.asarray(dense), bias=dense_bias)
    np.testing.assert_allclose(
        np.where(real_rows, np.asarray(out, np.float32), 0),
        np.where(real_rows, expected, 0),
        rtol=tol,
        atol=tol,
    )
    (_, got), (_, want) = (
        grads(recomputing),
        grads(lambda q, k, v: reference_attention(q, k, v, dense, bias=dense_bias)),
    )
    for g, w in zip(got, want, strict=True):
        scale = float(np.max(np.abs(np.asarray(w, np.float32))))
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=tol, atol=tol * scale
        )


def test_long_causal_attention_recomputes_on_the_cpu(monkeypatch):
    """From `RECOMPUTE_FROM_LENGTH` tokens the reference backend's causal attention on the CPU
    takes the recomputing path (no reference call), in query blocks of `causal_query_block`."""
    seen = spy_on_key_lengths(monkeypatch)
    blocks, real = [], attention_module.recomputing_causal_attention

    def spy(query, key, value, mask, block, scale, alibi):
        blocks.append(block)
        return real(query, key, value, mask, block, scale, alibi)

    monkeypatch.setattr(attention_module, "recomputing_causal_attention", spy)
    monkeypatch.setattr(attention_module, "RECOMPUTE_FROM_LENGTH", 256)
    query, key, value = random_qkv(np.random.default_rng(13), q_len=300, k_len=300)
    out = dot_product_attention(query, key, value, one_document_per_row(300), backend="reference")
    assert seen == [] and blocks == [128]
    expected = np_attention(query, key, value, np.asarray(causal_mask(300)))
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize("backend", ["reference", "jax"])
def test_fully_masked_rows_are_finite(backend):
    """A query that may attend to nothing (padding) gives finite output; other rows unaffected."""
    rng = np.random.default_rng(2)
    query, key, value = random_qkv(rng, kv_heads=2)
    mask = random_mask(rng, (2, 1, 5, 7))
    mask[0, 0, 3] = False
    mask[1, 0, :] = False
    out = np.asarray(attend(query, key, value, jnp.asarray(mask), backend=backend))
    assert np.isfinite(out).all()
    expected = np_attention(query, key, value, mask)
    np.testing.assert_allclose(out[0, :3], expected[0, :3], **TOL)
    np.testing.assert_allclose(out[0, 4:], expected[0, 4:], **TOL)


def test_attention_gradients_finite_with_fully_masked_rows():
    """Padding rows must not poison the gradients with NaNs."""
    rng = np.random.default_rng(3)
    query, key, value = random_qkv(rng)
    segments = jnp.asarray([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    mask = attention_mask(segments[:, :5], segments, causal=False)
    loss = jax.jit(jax.grad(lambda *qkv: reference_attention(*qkv, mask).sum(), argnums=(0, 1, 2)))
    grads = loss(query, key, value)
    assert all(np.isfinite(g).all() for g in grads)


def test_backends_agree():
    """reference and jax agree; auto is the reference off GPU or in float32."""
    rng = np.random.default_rng(4)
    query, key, value = random_qkv(rng, q_len=9, k_len=9, heads=6, kv_heads=3, head_dim=16)
    mask = jnp.asarray(random_mask(rng, (2, 1, 9, 9)))
    ref = attend(query, key, value, mask, backend="reference")
    np.testing.assert_allclose(attend(query, key, value, mask, backend="jax"), ref, **TOL)
    np.testing.assert_array_equal(attend(query, key, value, mask, backend="auto"), ref)


def test_dropout_needs_reference_backend():
    rng = np.random.default_rng(5)
    query, key, value = random_qkv(rng)
    with pytest.raises(ValueError, match="reference"):
        attend(query, key, value, backend="jax", dropout_rate=0.1, dropout_rng=jax.random.key(0))
    out = attend(
        query, key, value, backend="reference", dropout_rate=0.1, dropout_rng=jax.random.key(0)
    )
    assert np.isfinite(out).all()


def test_unknown_backend_raises():
    query, key, value = random_qkv(np.random.default_rng(6))
    with pytest.raises(ValueError, match="flash"):
        attend(query, key, value, backend="flash")


# --- multi-head attention -----------------------------------------------------------------


def np_multi_head_attention(params, inputs_q, inputs_kv, mask, rotary, q_positions, kv_positions):
    """Project, attend and project back in float64 from the module's own parameters."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    inputs_q, inputs_kv = np.asarray(inputs_q, np.float64), np.asarray(inputs_kv, np.float64)

    def project(name, x):
        return np.einsum("ble,ehd->blhd", x, p[name]["kernel"]) + p[name]["bias"]

    query, key, value = (
        project("query", inputs_q),
        project("key", inputs_kv),
        project("value", inputs_kv),
    )
    if rotary:
        query, key = np_rotary(query, q_positions), np_rotary(key, kv_positions)
    out = np_attention(query, key, value, mask)
    return np.einsum("blhd,hde->ble", out, p["out"]["kernel"]) + p["out"]["bias"]


def random_params(module, rng, *inputs, scale=0.3):
    """The module's parameter shapes filled with random values (biases too, not zero)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
    return jax.tree.map(
        lambda x: (scale * rng.normal(size=x.shape)).astype(np.float32), nn.unbox(shapes)
    )


@pytest.mark.parametrize(
    "kv_heads, cross, rotary, backend",
    [
        (None, False, False, "reference"),
        (2, False, True, "reference"),
        (1, True, False, "jax"),
        (None, False, True, "jax"),
    ],
)
def test_multi_head_attention_matches_numpy(kv_heads, cross, rotary, backend):
    rng = np.random.default_rng(7)
    batch, q_len, embed, heads, head_dim = 2, 6, 12, 4, 6
    k_len = 8 if cross else q_len
    inputs_q = rng.normal(size=(batch, q_len, embed)).astype(np.float32)
    inputs_kv = rng.normal(size=(batch, k_len, embed)).astype(np.float32) if cross else inputs_q
    mask = random_mask(rng, (batch, 1, q_len, k_len))
    q_positions = rng.integers(0, 50, size=(batch, q_len))
    kv_positions = rng.integers(0, 50, size=(batch, k_len)) if cross else q_positions
    module = MultiHeadAttention(heads, head_dim, num_kv_heads=kv_heads, backend=backend)
    params = random_params(module, rng, inputs_q, inputs_kv, mask)
    assert params["query"]["kernel"].shape == (embed, heads, head_dim)
    assert params["key"]["kernel"].shape == (embed, kv_heads or heads, head_dim)
    assert params["out"]["kernel"].shape == (heads, head_dim, embed)
    apply = jax.jit(functools.partial(module.apply, rotary=apply_rotary if rotary else None))
    out = apply(
        {"params": params},
        inputs_q,
        inputs_kv,
        jnp.asarray(mask),
        q_positions=jnp.asarray(q_positions),
        kv_positions=jnp.asarray(kv_positions),
    )
    expected = np_multi_head_attention(
        params, inputs_q, inputs_kv, mask, rotary, q_positions, kv_positions
    )
    assert out.shape == (batch, q_len, embed)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-5)


def test_multi_head_attention_backends_agree():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 7, 16)).astype(np.float32)
    segments = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3])
    mask = attention_mask(segments, segments, causal=True)
    params = random_params(MultiHeadAttention(4, 4, num_kv_heads=2), rng, x, x, mask)
    ref, fast = (
        jax.jit(MultiHeadAttention(4, 4, num_kv_heads=2, backend=backend).apply)(
            {"params": params}, x, x, mask
        )
        for backend in ("reference", "jax")
    )
    np.testing.assert_allclose(ref[0], fast[0], **TOL)
    np.testing.assert_allclose(ref[1, :4], fast[1, :4], **TOL)  # real tokens of the padded row


def test_multi_head_attention_dropout_with_jax_backend_raises():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(1, 4, 8)).astype(np.float32)
    module = MultiHeadAttention(2, 4, dropout_rate=0.1, backend="jax")
    params = {"params": random_params(module, rng, x, x)}
    apply = jax.jit(module.apply, static_argnames="deterministic")
    assert np.isfinite(apply(params, x, x)).all()  # deterministic: no dropout, no error
    with pytest.raises(ValueError, match="dropout"):
        apply(params, x, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


def test_auto_backend_selection(monkeypatch):
    from jaxlm.layers.attention import resolve_backend

    assert resolve_backend("auto", jnp.bfloat16) == "reference"  # on the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_backend("auto", jnp.bfloat16) == "cudnn"
    assert resolve_backend("auto", jnp.float16) == "cudnn"
    assert resolve_backend("auto", jnp.float32) == "reference"  # cuDNN attention is 16-bit only
    assert resolve_backend("auto", jnp.bfloat16, dropout_rate=0.1) == "reference"
    assert resolve_backend("jax", jnp.bfloat16) == "jax"
