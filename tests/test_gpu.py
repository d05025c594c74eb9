"""The GPU fast path on an NVIDIA GPU: cuDNN flash attention against float64 NumPy, selected by
'auto' in a bfloat16 GPT. Skipped where JAX has no GPU (`benchmarks/gpu_checks.sh` runs these)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import np_attention

from jaxlm.config import load_config
from jaxlm.layers.alibi import alibi_bias
from jaxlm.layers.attention import dot_product_attention, reference_attention
from jaxlm.layers.masks import SegmentMask, one_document_per_row
from jaxlm.models import build_model, init_params

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")

BATCH, LENGTH, HEADS, HEAD_DIM = 2, 256, 4, 64


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def packed_rows():
    """Row 0: two documents then padding; row 1: one document over the whole row."""
    segments = np.ones((BATCH, LENGTH), np.int32)
    segments[0, LENGTH // 3 :] = 2
    segments[0, -LENGTH // 8 :] = 0
    return jnp.asarray(segments)


def qkv(seed: int, kv_heads: int = HEADS):
    rng = np.random.default_rng(seed)
    shapes = [(BATCH, LENGTH, HEADS, HEAD_DIM)] + [(BATCH, LENGTH, kv_heads, HEAD_DIM)] * 2
    return [jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in shapes]


@pytest.mark.parametrize("kv_heads", [HEADS, 2])
def test_cudnn_attention_matches_float64(kv_heads):
    """Causal, packed and padded rows: cuDNN's output on bf16 inputs is within bf16 rounding of
    the float64 result on the same inputs (real tokens only: padding queries attend nowhere)."""
    query, key, value = qkv(0, kv_heads)
    segments = packed_rows()
    mask = SegmentMask(segments, segments, causal=True)
    out = jax.jit(lambda *a: dot_product_attention(*a, mask, backend="cudnn"))(query, key, value)
    expected = np_attention(query, key, value, np.asarray(mask.dense()))
    real = np.asarray(segments) != 0
    assert out.dtype == jnp.bfloat16
    assert relative_error(np.asarray(out)[real], expected[real]) < 1e-2


def test_cudnn_attention_without_segment_ids_matches_float64():
    """One document per row (is_causal alone, no dense mask): within bf16 rounding of float64."""
    query, key, value = qkv(3)
    mask = one_document_per_row(LENGTH)
    out = jax.jit(lambda *a: dot_product_attention(*a, mask, backend="cudnn"))(query, key, value)
    assert out.dtype == jnp.bfloat16
    assert relative_error(out, np_attention(query, key, value, np.asarray(mask.dense()))) < 1e-2


@pytest.mark.parametrize("segmented", [False, True])
def test_cudnn_sliding_window_attention_matches_float64(segmented):
    """A sliding window of 32 (`local_window_size`), with or without packed rows: within bf16
    rounding of float64 under the windowed mask."""
    query, key, value = qkv(4)
    segments = packed_rows()
    if segmented:
        mask = SegmentMask(segments, segments, causal=True, window=32)
    else:
        mask = one_document_per_row(LENGTH, window=32)
    out = jax.jit(lambda *a: dot_product_attention(*a, mask, backend="cudnn"))(query, key, value)
    expected = np_attention(query, key, value, np.asarray(mask.dense()))
    real = np.asarray(segments) != 0 if segmented else np.ones(segments.shape, bool)
    assert relative_error(np.asarray(out)[real], expected[real]) < 1e-2


def test_cudnn_attention_with_alibi_biases_matches_float64():
    """ALiBi's biases over packed rows (positions restarting per document), added by cuDNN in
    bfloat16: within bf16 rounding of float64 with the float64 biases."""
    query, key, value = qkv(5)
    segments = packed_rows()
    positions = jnp.asarray(
        np.concatenate([np.arange(LENGTH // 3), np.arange(LENGTH - LENGTH // 3)])
    )
    positions = jnp.stack([positions, jnp.arange(LENGTH)])
    bias = alibi_bias(HEADS, positions, positions)
    mask = SegmentMask(segments, segments, causal=True)
    out = jax.jit(lambda *a: dot_product_attention(*a, mask, bias=bias, backend="cudnn"))(
        query, key, value
    )
    expected = np_attention(query, key, value, np.asarray(mask.dense()), bias=bias)
    real = np.asarray(segments) != 0
    assert relative_error(np.asarray(out)[real], expected[real]) < 1e-2


def test_cudnn_attention_gradients_match_reference():
    """Gradients through cuDNN's backward kernel against the reference computed in float32."""
    query, key, value = qkv(1)
    segments = packed_rows()
    mask = SegmentMask(segments, segments, causal=True)
    cotangent = jax.random.normal(jax.random.key(2), query.shape) * (segments != 0)[..., None, None]

    def grads(attention, *qkv):
        return jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v) * cotangent), (0, 1, 2))(*qkv)

    fast = jax.jit(
        lambda *a: grads(lambda q, k, v: dot_product_attention(q, k, v, mask, backend="cudnn"), *a)
    )(query, key, value)
    upcast = [t.astype(jnp.float32) for t in (query, key, value)]
    slow = jax.jit(
        lambda *a: grads(lambda q, k, v: reference_attention(q, k, v, mask.dense()), *a)
    )(*upcast)
    for got, expected in zip(fast, slow, strict=True):
        assert relative_error(got, expected) < 2e-2


def test_auto_selects_cudnn_in_a_bfloat16_gpt():
    """`attention_backend: auto` puts cuDNN's fused attention kernel into the compiled step."""
    cfg = load_config(
        "demo", ["model.dtype=bfloat16", "model.attention_backend=auto", "model.scan_unroll=1"]
    ).model
    model = build_model(cfg)
    params = jax.jit(lambda key: nn.unbox(init_params(cfg, key)))(jax.random.key(0))
    tokens = jnp.zeros((2, 128), jnp.int32)
    loss = jax.jit(jax.grad(lambda p: model.apply({"params": p}, tokens).astype(jnp.float32).sum()))
    hlo = loss.lower(params).compile().as_text()
    assert "__cudnn$fmha" in hlo


def test_alternating_window_layers_on_cudnn_match_the_float32_reference():
    """Layers alternating a window of 32 and full attention (`lax.cond` per scanned layer, each
    branch a cuDNN kernel) in a bfloat16 GPT: cuDNN compiled in, logits within bfloat16 rounding
    of the float32 reference backend's."""
    alternating = ["model.sliding_window=32", "model.global_attention_every=2"]
    cfg = load_config("demo", [*alternating, "model.dtype=bfloat16"]).model
    reference = load_config("demo", [*alternating, "model.attention_backend=reference"]).model
    params = jax.jit(lambda key: nn.unbox(init_params(cfg, key)))(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 256), 0, cfg.vocab_size)
    fast = jax.jit(lambda p, t: build_model(cfg).apply({"params": p}, t))
    assert "__cudnn$fmha" in fast.lower(params, tokens).compile().as_text()
    expected = jax.jit(lambda p, t: build_model(reference).apply({"params": p}, t))(params, tokens)
    real = np.asarray(expected)[..., : cfg.vocab_size]
    assert relative_error(np.asarray(fast(params, tokens))[..., : cfg.vocab_size], real) < 2e-2
