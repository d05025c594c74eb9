"""Scaled dot-product attention backends and multi-head attention."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.linear import DenseGeneral
from jaxlm.layers.masks import SegmentMask, attention_mask
from jaxlm.layers.matmul import einsum, low_precision_on_cpu, on_cpu
from jaxlm.layers.norms import RMSNorm, rms_scale
from jaxlm.layers.pallas_attention import pallas_attention, pallas_fits
from jaxlm.layers.platform import target_platform
from jaxlm.layers.recomputing_attention import recomputing_causal_attention
from jaxlm.parallel import mesh_axes_size

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
    if length >= RECOMPUTE_FROM_LENGTH and bias is None and softcap is None:
        return recomputing_causal_attention(
            query, key, value, dense, block, score_scale(query.shape[-1], scale)
        )
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
    bias: jax.Array | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Scaled dot-product attention through the selected backend (shapes as in the reference).

    `mask` is a boolean [batch | 1, heads | 1, q, k] array or a `SegmentMask`; `bias` (float32
    [batch | 1, heads, q, k], added to the scores) rules out the Pallas kernel. `scale` and
    `softcap` are the reference's; 'jax' and 'cudnn' take no `softcap`.
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
            bias=bias,
            scale=scale,
            softcap=softcap,
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
        )
    if softcap is not None:
        raise ValueError(f"capped attention scores are not supported by the {backend!r} backend")
    return jax_attention(
        query, key, value, mask, bias=bias, scale=scale, backend=backend, dropout_rate=dropout_rate
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


def prepend_prefix(prefix: tuple[jax.Array, jax.Array], key, value, mask, bias=None):
    """Keys and values [prefix_length, kv_heads, head_dim] put before every row's keys and values
    [batch, k, kv_heads, head_dim], visible to every query; they have no position (not rotated,
    no relative position bias).

    Returns (keys, values, mask, bias) over prefix_length + k keys.
    """
    batch, length = key.shape[0], prefix[0].shape[0]
    key, value = (
        jnp.concatenate([jnp.broadcast_to(p.astype(t.dtype), (batch, *p.shape)), t], axis=1)
        for p, t in zip(prefix, (key, value), strict=True)
    )
    if isinstance(mask, SegmentMask):
        mask = mask.dense()
    if mask is not None:
        mask = jnp.concatenate([jnp.ones((*mask.shape[:-1], length), bool), mask], axis=-1)
    if bias is not None:
        bias = jnp.concatenate([jnp.zeros((*bias.shape[:-1], length), bias.dtype), bias], axis=-1)
    return key, value, mask, bias


# --- multi-head attention -----------------------------------------------------------------


def replicated_kv_heads(kv_heads: int) -> bool:
    """Whether the current mesh splits key/value heads more ways than `kv_heads` divides into
    (tensor parallelism over more shards than a grouped-query model's key/value heads): each
    shard then keeps every key/value head (see `jaxlm.parallel`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    (axes,) = nn.logical_to_mesh_axes(("activation_kv_heads",))
    return kv_heads % mesh_axes_size(axes, mesh.shape) != 0


class MultiHeadAttention(nn.Module):
    """Multi-head (optionally grouped-query) attention with logical axis names on every weight.

    Self-attention when `inputs_kv` is `inputs_q`; cross-attention otherwise. Rotary position
    embedding, when given as `rotary(x, positions)`, is applied to queries and keys.

    With `kv_cache` = (keys, values), this layer's, each [batch, kv_heads, cache_length,
    head_dim], the inputs' keys and values are written at slot `decode_index`, the queries attend
    over the whole cache (`mask` is then [batch, 1, q, cache_length]) and the call returns
    (output, updated kv_cache).

    `prefix` = (keys, values), each [prefix_length, kv_heads, head_dim], are keys and values that
    every query may attend to besides the inputs' (prefix tuning; see `prepend_prefix`).

    `bias` [batch | 1, heads, q, k] is added to the scores (T5's relative position bias);
    `scale` and `softcap` are `reference_attention`'s.

    Key/value heads replicated over the mesh (`replicated_kv_heads`) are repeated to the query
    heads before attention.

    With `full_attention` (a bool, or a boolean scalar traced in a scanned layer stack) true,
    the queries attend under `full_mask` instead of `mask` (a model whose layers alternate
    sliding-window and full attention); each branch keeps its backend's fast path.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    use_bias: bool = True
    qkv_bias: bool = False  # biases on the query, key and value projections even without use_bias
    qk_norm_eps: float | None = None  # set: RMSNorm each head's queries and keys (learned scales)
    qk_norm_unit_offset: bool = False  # those norms scale by 1 + scale (Gemma's)
    dropout_rate: float = 0.0
    scale: float | None = None
    softcap: float | None = None
    backend: str = "auto"
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
    out_kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask: jax.Array | None = None,
        *,
        rotary=None,
        q_positions: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
        deterministic: bool = True,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        decode_index: jax.Array | None = None,
        prefix: tuple[jax.Array, jax.Array] | None = None,
        bias: jax.Array | None = None,
        full_mask=None,
        full_attention: jax.Array | None = None,
    ):
        # inputs_q: [batch, q, embed]; inputs_kv: [batch, k, embed]
        kv_heads = self.num_kv_heads or self.num_heads
        projection = functools.partial(
            DenseGeneral,
            kernel_axes=("embed", "heads", "kv"),
            use_bias=self.use_bias or self.qkv_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        query = projection((self.num_heads, self.head_dim), name="query")(inputs_q)
        kv_projection = functools.partial(projection, kernel_axes=("embed", "kv_heads", "kv"))
        key = kv_projection((kv_heads, self.head_dim), name="key")(inputs_kv)
        value = kv_projection((kv_heads, self.head_dim), name="value")(inputs_kv)
        if self.qk_norm_eps is not None:
            query, key = (
                RMSNorm(
                    epsilon=self.qk_norm_eps,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    **rms_scale(self.qk_norm_unit_offset, "kv"),
                    name=f"{name}_norm",
                )(t)
                for name, t in (("query", query), ("key", key))
            )
        if rotary is not None:
            query, key = rotary(query, q_positions), rotary(key, kv_positions)
        head_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        replicated = replicated_kv_heads(kv_heads)
        kv_axes = (*head_axes[:2], None if replicated else "activation_kv_heads", head_axes[3])
        query = nn.with_logical_constraint(query, head_axes)
        key, value = (nn.with_logical_constraint(t, kv_axes) for t in (key, value))
        if kv_cache is not None:
            # This layer's keys and values, [batch, kv_heads, cache_length, head_dim]: the layout
            # in which attention reads them without transposing.
            kv_cache = tuple(
                jax.lax.dynamic_update_slice(
                    cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), (0, 0, decode_index, 0)
                )
                for cache, new in zip(kv_cache, (key, value), strict=True)
            )
            key, value = (jnp.swapaxes(cache, 1, 2) for cache in kv_cache)
            if low_precision_on_cpu(query, key):
                # XLA:CPU lays out products over the cache for a kernel with no bf16 x bf16 ->
                # f32 form (it fails at run time); float32 products of 16-bit values are exact.
                query, key, value = (t.astype(jnp.float32) for t in (query, key, value))
        dropout_rate = 0.0 if deterministic else self.dropout_rate
        dropout_rng = self.make_rng("dropout") if dropout_rate > 0.0 else None

        def attend(mask):
            keys, values, bias_ = key, value, bias
            if prefix is not None:
                keys, values, mask, bias_ = prepend_prefix(prefix, keys, values, mask, bias_)
            if replicated:  # each shard's query heads get their key/value heads' copies
                keys, values = (
                    nn.with_logical_constraint(
                        jnp.repeat(t, self.num_heads // kv_heads, axis=2), head_axes
                    )
                    for t in (keys, values)
                )
            return dot_product_attention(
                query,
                keys,
                values,
                mask,
                bias=bias_,
                scale=self.scale,
                softcap=self.softcap,
                backend=self.backend,
                dropout_rate=dropout_rate,
                dropout_rng=dropout_rng,
            )

        if full_attention is None or isinstance(full_attention, bool):
            out = attend(full_mask if full_attention else mask)
        else:
            out = jax.lax.cond(full_attention, lambda: attend(full_mask), lambda: attend(mask))
        out = nn.with_logical_constraint(out.astype(self.dtype), head_axes)
        out = DenseGeneral(
            features=(inputs_q.shape[-1],),
            kernel_axes=("heads", "kv", "embed"),
            use_bias=self.use_bias,
            kernel_init=self.out_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)
        return out if kv_cache is None else (out, kv_cache)
