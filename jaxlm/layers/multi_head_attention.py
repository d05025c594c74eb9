"""Multi-head (and grouped-query) attention: projections, rotary positions, the key/value
cache, prefix keys, then `jaxlm.layers.attention.dot_product_attention`."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.alibi import dense_bias
from jaxlm.layers.attention import dot_product_attention
from jaxlm.layers.linear import DenseGeneral
from jaxlm.layers.masks import SegmentMask
from jaxlm.layers.matmul import low_precision_on_cpu
from jaxlm.layers.norms import LayerNorm, RMSNorm, rms_scale
from jaxlm.parallel import mesh_axes_size

# qk_norm_scope -> (the trailing axes normalized together, the trailing axes the scale spans)
QK_NORM_AXES = {"head": (1, 1), "heads": (2, 2), "each_head": (1, 2)}


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
        bias = dense_bias(bias)
        bias = jnp.concatenate([jnp.zeros((*bias.shape[:-1], length), bias.dtype), bias], axis=-1)
    return key, value, mask, bias


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

    `bias` [batch | 1, heads, q, k] is added to the scores (T5's relative position bias), or an
    `AlibiBias`, built by the attention backend; `scale` and `softcap` are
    `reference_attention`'s. Queries, keys and values are clipped to [-clip_qkv, clip_qkv] when
    set, and queries and keys normalized when `qk_norm_eps` is (`qk_norm_scope`, `qk_norm_kind`).

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
    qk_norm_eps: float | None = None  # set: normalize queries and keys (learned scales)
    qk_norm_unit_offset: bool = False  # those norms scale by 1 + scale (Gemma's)
    # head: each head's features, one scale for all (Qwen3) | heads: all heads' together (OLMo
    # 2) | each_head: each head's features, a scale each (StableLM 2 12B)
    qk_norm_scope: str = "head"
    qk_norm_kind: str = "rmsnorm"  # or layernorm, without biases (StableLM 2 12B)
    clip_qkv: float | None = None  # set: queries, keys and values clipped to [-clip, clip]
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
        if self.clip_qkv is not None:
            query, key, value = (
                jnp.clip(t, -self.clip_qkv, self.clip_qkv) for t in (query, key, value)
            )
        if self.qk_norm_eps is not None:
            query = self._qk_norm("query", ("heads", "kv"))(query)
            key = self._qk_norm("key", ("kv_heads", "kv"))(key)
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

    def _qk_norm(self, name: str, axes: tuple[str, str]) -> nn.Module:
        """The norm of the queries or keys [batch, length, heads, head_dim] (`axes`: the logical
        names of the last two) that `qk_norm_scope` and `qk_norm_kind` describe."""
        normalized, scaled = QK_NORM_AXES[self.qk_norm_scope]
        common = dict(epsilon=self.qk_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.qk_norm_kind == "layernorm":
            init = nn.with_logical_partitioning(nn.initializers.ones, axes[-scaled:])
            return LayerNorm(
                scale_init=init, use_bias=False, scale_axes=scaled, name=f"{name}_norm", **common
            )
        return RMSNorm(
            feature_axes=normalized,
            scale_axes=scaled,
            **rms_scale(self.qk_norm_unit_offset, *axes[-scaled:]),
            name=f"{name}_norm",
            **common,
        )
