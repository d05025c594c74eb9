"""The Pallas splash-attention backend (the TPU fast path) against the reference attention, run
in Pallas interpret mode on the CPU; and which backend `auto` picks on each platform."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import MeshConfig, load_config
from jaxlm.layers.attention import dot_product_attention, reference_attention, resolve_backend
from jaxlm.layers.masks import SegmentMask, causal_mask, one_document_per_row
from jaxlm.layers.pallas_attention import pallas_attention, pallas_block, pallas_fits
from jaxlm.layers.platform import target_platform, tracing_for
from jaxlm.models import build_model, init_params
from jaxlm.parallel import activate, make_mesh

TOL = dict(rtol=2e-5, atol=2e-5)


def qkv(batch=2, length=256, heads=4, kv_heads=2, head_dim=16, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(batch, length, heads, head_dim)] + [(batch, length, kv_heads, head_dim)] * 2
    return [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]


def packed_segments(length=256) -> jnp.ndarray:
    """Row 0: two packed documents; row 1: one document, then padding (segment 0)."""
    segments = np.ones((2, length), np.int32)
    segments[0, 100:] = 2
    segments[1, 200:] = 0
    return jnp.asarray(segments)


def test_pallas_matches_reference_causal_packed_padded():
    """Grouped-query heads (4 over 2), causal, two packed documents and a padded row."""
    query, key, value = qkv()
    segments = packed_segments()
    mask = SegmentMask(segments, segments, causal=True)
    real = np.asarray(segments != 0)  # outputs of padding queries are not compared

    def loss(attention, q, k, v):
        return jnp.sum(attention(q, k, v) * real[:, :, None, None] * q)

    # block=128 tiles the 256 positions 2 x 2: the kernel skips the block above the diagonal.
    pallas = jax.jit(lambda q, k, v: pallas_attention(q, k, v, mask, block=128))
    expected = reference_attention(query, key, value, mask.dense())
    np.testing.assert_allclose(pallas(query, key, value)[real], expected[real], **TOL)

    grads = jax.jit(jax.grad(lambda *a: loss(pallas, *a), argnums=(0, 1, 2)))(query, key, value)
    reference = jax.grad(
        lambda *a: loss(lambda q, k, v: reference_attention(q, k, v, mask.dense()), *a),
        argnums=(0, 1, 2),
    )(query, key, value)
    for got, want in zip(grads, reference, strict=True):
        np.testing.assert_allclose(got, want, **TOL)


def test_pallas_caps_and_scales_scores_as_the_reference():
    """Gemma 2's score factor and tanh cap go into the kernel: outputs and gradients as the
    reference's."""
    query, key, value = qkv(seed=3)
    query = query * 3  # scores well beyond the cap
    options = dict(scale=0.2, softcap=2.0)
    mask = one_document_per_row(256)

    def loss(attention, q, k, v):
        return jnp.sum(attention(q, k, v) * q)

    pallas = jax.jit(lambda q, k, v: pallas_attention(q, k, v, mask, **options))
    reference = lambda q, k, v: reference_attention(q, k, v, causal_mask(256), **options)  # noqa: E731
    np.testing.assert_allclose(pallas(query, key, value), reference(query, key, value), **TOL)
    got = jax.jit(jax.grad(lambda *a: loss(pallas, *a), argnums=(0, 1, 2)))(query, key, value)
    want = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(query, key, value)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_pallas_without_mask_and_cross_lengths():
    """No mask (full attention), 128 queries over 256 keys: one block by two."""
    query, key, value = qkv(length=256)
    query = query[:, :128]
    got = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, backend="pallas"))(
        query, key, value
    )
    np.testing.assert_allclose(got, reference_attention(query, key, value), **TOL)


def test_pallas_under_a_mesh_runs_per_shard():
    """Batch over `data`, heads over `tensor`: the kernel runs inside shard_map per shard."""
    query, key, value = qkv(length=128)
    segments = packed_segments(128)
    mask = SegmentMask(segments, segments, causal=True)
    real = np.asarray(segments != 0)
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), jax.devices()[:4])
    with activate(mesh):
        attend = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m, backend="pallas"))
        assert "manual_computation" in attend.lower(query, key, value, mask).as_text()
        got = attend(query, key, value, mask)
    expected = reference_attention(query, key, value, mask.dense())
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(expected)[real], **TOL)


def test_pallas_one_document_per_row_is_causal_alone():
    """No segment ids: the kernel's causal mask and nothing else, alone and per shard."""
    query, key, value = qkv(length=128)
    mask = one_document_per_row(128)
    expected = reference_attention(query, key, value, causal_mask(128))
    attend = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m, backend="pallas"))
    np.testing.assert_allclose(attend(query, key, value, mask), expected, **TOL)
    with activate(make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), jax.devices()[:4])):
        np.testing.assert_allclose(attend(query, key, value, mask), expected, **TOL)


def test_gpt_with_pallas_backend_matches_reference():
    """The model passes a SegmentMask down the layer scan; logits agree on packed rows."""
    overrides = [
        "model.num_layers=2",
        "model.embed_dim=32",
        "model.num_heads=2",
        "model.mlp_dim=64",
        "model.vocab_size=100",
        "model.max_len=128",
    ]
    cfg = load_config(None, [*overrides, "model.attention_backend=reference"]).model
    pallas_cfg = load_config(None, [*overrides, "model.attention_backend=pallas"]).model
    params = {"params": nn.unbox(init_params(cfg, jax.random.key(0)))}
    tokens = jax.random.randint(jax.random.key(1), (2, 128), 0, 100)
    segments = packed_segments(128)
    logits = [
        jax.jit(build_model(c).apply)(params, tokens, segment_ids=segments)
        for c in (cfg, pallas_cfg)
    ]
    real = np.asarray(segments != 0)
    np.testing.assert_allclose(logits[1][real], logits[0][real], rtol=1e-4, atol=1e-4)


def test_kernel_shape_constraints():
    """Lengths must be multiples of 128 (tiled by 512, 256 or 128); a dense mask never fits."""
    assert [pallas_block(n) for n in (128, 384, 1024, 1536, 100, 64)] == [
        128,
        128,
        512,
        512,
        None,
        None,
    ]
    query, key, _ = qkv(length=128)
    segments = packed_segments(128)
    assert pallas_fits(query, key, SegmentMask(segments, segments, causal=True))
    assert pallas_fits(query, key, None)
    assert not pallas_fits(query, key, SegmentMask(segments, segments).dense())
    assert not pallas_fits(query[:, :100], key, None)


def test_pallas_on_inputs_it_does_not_fit_is_the_reference():
    """Decoding (a dense mask over the cache) and short rows fall back to the reference."""
    query, key, value = qkv(length=16)
    segments = jnp.ones((2, 16), jnp.int32)
    mask = SegmentMask(segments, segments, causal=True)
    got = dot_product_attention(query, key, value, mask, backend="pallas")
    np.testing.assert_array_equal(got, reference_attention(query, key, value, mask.dense()))


def test_backend_selection_per_platform(monkeypatch):
    assert resolve_backend("auto", jnp.bfloat16, fits_pallas=True) == "reference"  # CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert resolve_backend("auto", jnp.bfloat16, fits_pallas=True) == "pallas"
    assert resolve_backend("auto", jnp.float32, fits_pallas=True) == "pallas"
    assert resolve_backend("auto", jnp.bfloat16, fits_pallas=False) == "reference"
    assert resolve_backend("auto", jnp.bfloat16, 0.1, fits_pallas=True) == "reference"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_backend("auto", jnp.bfloat16, fits_pallas=True) == "cudnn"
    assert resolve_backend("auto", jnp.float16) == "cudnn"
    assert resolve_backend("auto", jnp.float32) == "reference"  # cuDNN attention is 16-bit
    assert resolve_backend("auto", jnp.bfloat16, 0.1) == "reference"  # attention dropout
    assert resolve_backend("pallas", jnp.bfloat16, fits_pallas=False) == "reference"
    assert resolve_backend("jax", jnp.bfloat16) == "jax"


def _traced(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


def test_traced_for_a_tpu_on_the_cpu_attention_takes_the_compiled_kernel():
    """What `jaxlm compile --topology` traces on a CPU host: the TPU's splash kernel, compiled
    (not interpreted), where the host itself takes its causal query blocks."""
    query, key, value = (x.astype(jnp.bfloat16) for x in qkv(length=128))
    mask = SegmentMask(None, None, causal=True, length=128)

    def attention(query, key, value):
        return dot_product_attention(query, key, value, mask, backend="auto")

    on_host = _traced(attention, query, key, value)
    with tracing_for("tpu"):
        assert target_platform() == "tpu"
        for_tpu = _traced(attention, query, key, value)
    assert target_platform() == jax.default_backend() == "cpu"
    assert "pallas_call" not in on_host and "concatenate[dimension=1]" in on_host
    assert "pallas_call" in for_tpu and "interpret=False" in for_tpu.replace(" ", "")


def test_tracing_for_nests_and_restores_the_platform():
    with tracing_for("cuda"):
        assert target_platform() == "gpu"
        with pytest.raises(RuntimeError), tracing_for("tpu"):
            assert target_platform() == "tpu"
            raise RuntimeError
        assert target_platform() == "gpu"
    assert target_platform() == "cpu"
