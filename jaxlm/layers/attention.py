"""Scaled dot-product attention and its backends: the reference in XLA ops (with a causal
block path on the CPU), `jax.nn.dot_product_attention` (XLA or cuDNN) and Pallas splash."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.layers.alibi import AlibiBias, dense_bias
from jaxlm.layers.masks import SegmentMask, attention_mask
from jaxlm.layers.matmul import einsum, on_cpu
from jaxlm.layers.pallas_attention import pallas_attention, pallas_fits
from jaxlm.layers.platform import target_platform
from jaxlm.layers.recomputing_attention import recomputing_causal_attention

ATTENTION_BACKENDS = ("auto", "reference", "jax", "cudnn", "pallas")
# From this many tokens, causal attention on the CPU recomputes its probabilities in the
# backward pass (`recomputing_causal_attention`): the demo GPT's step is 1.15x as fast at 1,024
# tokens; at 512 it was 2% slower in bfloat16 (and 6% faster in float32)
RECOMPUTE_FROM_LENGTH = 1024


def reference_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """softmax(cap(q k^T * scale) + bias) v in plain XLA ops; logits and softmax in float32.
    The scale is 1 / sqrt(head_dim) unless given; with a `softcap` c, cap(s) = c tanh(s / c)
    (Gemma 2), otherwise the scores themselves.

    query: [batch, q, heads, head_dim]; key, value: [batch, k, kv_heads, head_dim] where
    heads is a multiple of kv_heads (grouped-query attention); bias: [batch | 1, heads, q, k].
    Returns [batch, q, heads, head_dim]. The queries of each key/value head's group share its
    keys and values: both products are batched over (batch, kv_heads), with XLA choosing the
    operand layouts.
    """
    batch, q_len, heads, head_dim = query.shape
    k_len, kv_heads = key.shape[1], key.shape[2]
    group = heads // kv_heads
    q = query.reshape(batch, q_len, kv_heads, group, head_dim)
    logits = einsum("bqhgd,bkhd->bhgqk", q, key, preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, kv_heads, group * q_len, k_len) * score_scale(head_dim, scale)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    if bias is not None:
        logits = logits + bias.reshape(bias.shape[0], kv_heads, group * q_len, k_len)
    if mask is not None:
        # [batch | 1, heads | 1, q, k] -> [batch | 1, kv_heads | 1, group * q, k]
        mask_heads = kv_heads if mask.shape[1] == heads else 1
        mask = jnp.broadcast_to(
            mask.reshape(mask.shape[0], mask_heads, -1, *mask.shape[2:]),
            (mask.shape[0], mask_heads, group, q_len, k_len),
        ).reshape(mask.shape[0], mask_heads, group * q_len, k_len)
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    probs = probs.astype(value.dtype).reshape(batch, kv_heads, group, q_len, k_len)
    out = einsum("bhgqk,bkhd->bqhgd", probs, value)
    return out.reshape(batch, q_len, heads, head_dim)


def score_scale(head_dim: int, scale: float | None) -> float:
    """The factor of the attention scores: `scale`, by default 1 / sqrt(head_dim)."""
    return head_dim**-0.5 if scale is None else scale


def causal_query_block(length: int) -> int:
    """Queries per block of causal self-attention over `length` tokens (see
    `causal_blocks_attention`): 64 below 256 tokens, then 128, and an eighth beyond 1,024."""
    return 64 if length < 256 else max(128, length // 8)


def causal_blocks_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: SegmentMask,
    bias: jax.Array | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """The reference attention of causal self-attention, one block of queries at a time, each
    against the keys up to its last query: the key blocks above the diagonal, which the mask
    hides entirely, are never computed (up to half the work of long sequences). The reference
    backend takes this path on the CPU, where it was measured faster from 128 to 2,048 tokens;
    from `RECOMPUTE_FROM_LENGTH` tokens (without a `bias` or a `softcap`) the blocks' backward
    pass recomputes the probabilities."""
    length, block = query.shape[1], causal_query_block(query.shape[1])
    dense = mask.dense()
    lazy = bias is None or isinstance(bias, AlibiBias)
    if length >= RECOMPUTE_FROM_LENGTH and lazy and softcap is None:
        return recomputing_causal_attention(
            query, key, value, dense, block, score_scale(query.shape[-1], scale), bias
        )
    bias = dense_bias(bias)
    return jnp.concatenate(
        [
            reference_attention(
                query[:, start : start + block],
                key[:, : start + block],
                value[:, : start + block],
                dense[:, :, start : start + block, : start + block],
                bias=None if bias is None else bias[:, :, start : start + block, : start + block],
                scale=scale,
                softcap=softcap,
            )
            for start in range(0, length, block)
        ],
        axis=1,
    )


def resolve_backend(
    backend: str,
    dtype: jnp.dtype,
    dropout_rate: float = 0.0,
    fits_pallas: bool = False,
    softcap: float | None = None,
) -> str:
    """'auto' picks the Pallas splash kernel on TPUs where the inputs fit it, cuDNN flash
    attention on NVIDIA GPUs in 16-bit, the reference elsewhere and with attention dropout or
    capped scores (which `jax.nn.dot_product_attention` lacks). 'pallas' on inputs that do not
    fit the kernel (decoding, short sequences) is the reference."""
    if backend == "pallas" and not fits_pallas:
        return "reference"
    if backend != "auto":
        return backend
    if dropout_rate > 0.0:
        return "reference"
    platform = target_platform()
    if platform == "tpu" and fits_pallas:
        return "pallas"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if platform == "gpu" and half and softcap is None else "reference"


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | SegmentMask | None = None,
    *,
    bias: jax.Array | AlibiBias | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Scaled dot-product attention through the selected backend (shapes as in the reference).

    `mask` is a boolean [batch | 1, heads | 1, q, k] array or a `SegmentMask`; `bias` (float32
    [batch | 1, heads, q, k], or an `AlibiBias` that each backend builds where it adds it, or
    never: the CPU's blocks) rules out the Pallas kernel. `scale` and `softcap` are the
    reference's; 'jax' and 'cudnn' take no `softcap`.
    """
    fits_pallas = bias is None and pallas_fits(query, key, mask)
    backend = resolve_backend(backend, query.dtype, dropout_rate, fits_pallas, softcap)
    if backend == "pallas":
        if dropout_rate > 0.0:
            raise ValueError("attention dropout is only supported by the 'reference' backend")
        return pallas_attention(query, key, value, mask, scale=scale, softcap=softcap)
    if backend == "reference":
        if isinstance(mask, SegmentMask) and mask.causal and dropout_rate == 0.0 and on_cpu():
            return causal_blocks_attention(query, key, value, mask, bias, scale, softcap)
        if isinstance(mask, SegmentMask):
            mask = mask.dense()
        return reference_attention(
            query,
            key,
            value,
            mask,
            bias=dense_bias(bias),
            scale=scale,
            softcap=softcap,
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
        )
    if softcap is not None:
        raise ValueError(f"capped attention scores are not supported by the {backend!r} backend")
    return jax_attention(
        query,
        key,
        value,
        mask,
        bias=dense_bias(bias),
        scale=scale,
        backend=backend,
        dropout_rate=dropout_rate,
    )


def jax_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | SegmentMask | None,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
    backend: str,
    dropout_rate: float = 0.0,
) -> jax.Array:
    """`jax.nn.dot_product_attention`: XLA's version ('jax') or cuDNN flash attention ('cudnn').

    A causal `SegmentMask` is passed as `is_causal` (and its sliding window as
    `local_window_size`), so that cuDNN skips the blocks above the diagonal instead of reading a
    [q, k] bias there; only the segment and padding part of the mask stays dense, and there is
    none without segment ids.
    """
    if dropout_rate > 0.0:
        raise ValueError(
            f"attention dropout is only supported by the 'reference' backend, not {backend!r}"
        )
    if backend not in ("jax", "cudnn"):
        raise ValueError(
            f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}"
        )
    is_causal, window = False, None
    if isinstance(mask, SegmentMask):
        is_causal, window = mask.causal, mask.window
        segments = mask.query_segments, mask.key_segments
        mask = None if segments[0] is None else attention_mask(*segments, causal=False)
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=None if bias is None else bias.astype(query.dtype),
        mask=mask,
        scale=scale,
        is_causal=is_causal,
        local_window_size=None if window is None else (window - 1, 0),
        implementation="cudnn" if backend == "cudnn" else None,
    )
