"""The Pallas splash-attention kernel (the TPU fast path) behind `dot_product_attention`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.masks import SegmentMask
from jaxlm.layers.platform import target_platform

PALLAS_BLOCKS = (512, 256, 128)  # splash-attention tile sizes tried, largest first


def pallas_block(length: int) -> int | None:
    """The largest splash-attention tile that divides `length`; None when none does."""
    return next((block for block in PALLAS_BLOCKS if length % block == 0), None)


def pallas_fits(query: jax.Array, key: jax.Array, mask) -> bool:
    """The splash kernel takes no dense mask (nor a sliding window) and tiles both lengths by
    multiples of 128."""
    lengths = (query.shape[1], key.shape[1])
    segments = mask is None or (isinstance(mask, SegmentMask) and mask.window is None)
    return segments and all(pallas_block(length) is not None for length in lengths)


def _splash_kernel(
    group: int, q_len: int, kv_len: int, causal: bool, block: int | None, softcap: float | None
):
    """A splash-attention kernel over `group` query heads sharing one key/value head, its scores
    capped by `softcap` (c tanh(s / c)) when given."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block_q, block_kv = (block, block) if block else (pallas_block(q_len), pallas_block(kv_len))
    make = splash.CausalMask if causal else splash.FullMask
    blocks = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    return splash.make_splash_mqa_single_device(
        splash.MultiHeadMask([make((q_len, kv_len)) for _ in range(group)]),
        block_sizes=blocks,
        attn_logits_soft_cap=softcap,
        interpret=target_platform() != "tpu",
    )


def pallas_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: SegmentMask | None = None,
    *,
    block: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """Attention through the Pallas splash kernel (shapes, `scale` and `softcap` as in the
    reference).

    Query and key lengths must be multiples of 128; each is tiled by the largest of 512, 256,
    128 that divides it (or by `block`). The mask is causal and/or by segment ids; padding
    (segment 0) attends to padding, so the outputs of padding queries differ from the
    reference's, those of real tokens do not. Off TPUs the kernel runs in Pallas interpret mode
    (slow; for tests). Under a mesh it runs per shard (`shard_map`): batch and heads split as
    the activations' logical axes say.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    causal = mask is not None and mask.causal
    kernel = _splash_kernel(
        query.shape[2] // key.shape[2], query.shape[1], key.shape[1], causal, block, softcap
    )
    scale = query.shape[-1] ** -0.5 if scale is None else scale

    def attend(query, key, value, query_segments, key_segments):
        batch, q_len, heads, head_dim = query.shape
        kv_heads = key.shape[2]
        # [batch, q, heads, d] -> [batch, kv_heads, group, q, d]; keys -> [batch, kv_heads, k, d]
        q = query.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
        q = (q * scale).transpose(0, 2, 3, 1, 4)
        k, v = (jnp.swapaxes(t, 1, 2) for t in (key, value))

        def one_row(q, k, v, query_segments, key_segments):
            segment_ids = None
            if query_segments is not None:
                segment_ids = splash.SegmentIds(query_segments, key_segments)
            return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segment_ids))(q, k, v)

        out = jax.vmap(one_row)(q, k, v, query_segments, key_segments)
        return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim)

    segments = (None, None) if mask is None else (mask.query_segments, mask.key_segments)
    heads = nn.logical_to_mesh_axes(
        ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    )
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(axis is None for axis in heads):
        return attend(query, key, value, *segments)
    rows = jax.sharding.PartitionSpec(heads[0], None)
    return jax.shard_map(
        attend,
        in_specs=(heads, heads, heads, rows, rows),
        out_specs=heads,
        check_vma=False,
    )(query, key, value, *segments)
