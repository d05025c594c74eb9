"""Causal self-attention for long sequences on the CPU, whose backward pass recomputes the
attention probabilities (flash attention's backward) instead of keeping them.

The forward pass takes one block of queries at a time against the keys up to its last query, and
keeps only the output and each query's softmax statistics: its largest score and the log of its
sum of exponentials. The backward pass recomputes each block's probabilities from them and
accumulates the keys' and values' gradients block by block. ALiBi's biases (`AlibiBias`) are
computed for each block from the positions, in both passes, and never kept. Autodiff of the
blocked reference attention instead sums every block's padded gradient slices in transposed
layouts, which on XLA:CPU was the largest cost of long sequences. The layout is heads-major
throughout ([batch, kv_heads, group x tokens, head_dim]), and the keys' and values' gradients
are formed transposed ([head_dim, tokens], each product's small operand first), so that every
product takes XLA:CPU's library path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.layers.alibi import AlibiBias

F32 = jnp.float32
NEGATIVE = jnp.finfo(F32).min


def recomputing_causal_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    block: int,
    scale: float | None = None,
    alibi: AlibiBias | None = None,
) -> jax.Array:
    """softmax(q k^T * scale + alibi) v under `mask` ([batch | 1, 1, q, k] boolean, causal), in
    blocks of `block` queries; the scale is 1 / sqrt(head_dim) unless given. Shapes as
    `reference_attention`: query [batch, length, heads, head_dim], key and value [batch, length,
    kv_heads, head_dim]; heads a multiple of kv_heads."""
    batch, length, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    group = heads // kv_heads
    # [batch, kv_heads, group, length, head_dim] and [batch, kv_heads, length, head_dim]
    q = query.reshape(batch, length, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    k, v = (t.transpose(0, 2, 1, 3) for t in (key, value))
    out = _attention(block, head_dim**-0.5 if scale is None else scale, q, k, v, mask, alibi)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def _blocks(length: int, block: int):
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def _product(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=F32)


def _grouped(x: jax.Array) -> jax.Array:
    """[b, h, g, q, ...] -> [b, h, g * q, ...]."""
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], *x.shape[4:])


def _rows(x: jax.Array, start: int, end: int) -> jax.Array:
    """Tokens [start, end) of x [b, h, g, tokens, d], grouped: [b, h, g * (end - start), d]."""
    return _grouped(x[:, :, :, start:end])


def _scores(rows, k, mask, alibi, start, end, scale):
    """Masked scaled (and biased) scores of query rows [start, end) (`_rows`) against keys [0,
    end): [b, h, g, q, k], and the mask's part that they see."""
    batch, kv_heads, grouped_rows, _ = rows.shape
    scores = _product("bhqd,bhkd->bhqk", rows, k[:, :, :end]) * scale
    scores = scores.reshape(batch, kv_heads, grouped_rows // (end - start), end - start, end)
    if alibi is not None:
        part = AlibiBias(
            alibi.q_positions[:, start:end], alibi.k_positions[:, :end], alibi.num_heads
        )
        scores = scores + part.dense().reshape(scores.shape)
    visible = mask[:, :, None, start:end, :end]
    return jnp.where(visible, scores, NEGATIVE), visible


def _forward_blocks(block, scale, q, k, v, mask, alibi):
    outputs, maxima, log_totals = [], [], []
    for start, end in _blocks(q.shape[3], block):
        scores, _ = _scores(_rows(q, start, end), k, mask, alibi, start, end, scale)
        maximum = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - maximum)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = _product("bhqk,bhkd->bhqd", _grouped(weights.astype(v.dtype)), v[:, :, :end])
        outputs.append((out.reshape(*weights.shape[:-1], -1) / total).astype(q.dtype))
        maxima.append(maximum)
        log_totals.append(jnp.log(total))
    return tuple(jnp.concatenate(t, axis=3) for t in (outputs, maxima, log_totals))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attention(block, scale, q, k, v, mask, alibi):
    return _forward_blocks(block, scale, q, k, v, mask, alibi)[0]


def _forward(block, scale, q, k, v, mask, alibi):
    out, maximum, log_total = _forward_blocks(block, scale, q, k, v, mask, alibi)
    return out, (q, k, v, mask, alibi, out, maximum, log_total)


def _backward(block, scale, residuals, grad):
    q, k, v, mask, alibi, out, maximum, log_total = residuals
    batch, kv_heads, _, length, head_dim = q.shape
    # d softmax: p * (dp - sum(dp * p)), where sum(dp * p) = sum(grad * out) per query
    grad_dot_out = jnp.sum(grad.astype(F32) * out.astype(F32), axis=-1, keepdims=True)
    transposed = (batch, kv_heads, head_dim, length)  # keys' and values' gradients, [d, k]
    key_grad_t, value_grad_t = jnp.zeros(transposed, F32), jnp.zeros(transposed, F32)
    query_grads = []
    for start, end in _blocks(length, block):
        rows, grad_rows = _rows(q, start, end), _rows(grad, start, end)
        scores, visible = _scores(rows, k, mask, alibi, start, end, scale)
        # (scores - maximum) first: a row with no visible key then gets probabilities 1 / k,
        # as in the forward pass, where maximum + log(total) would round back to the maximum
        rows_at = slice(start, end)
        probs = jnp.exp((scores - maximum[:, :, :, rows_at]) - log_total[:, :, :, rows_at])
        value_grad_t = value_grad_t.at[..., :end].add(
            _product("bhdq,bhqk->bhdk", _small_first(grad_rows), _grouped(probs.astype(v.dtype)))
        )
        probs_grad = _product("bhqd,bhkd->bhqk", grad_rows, v[:, :, :end]).reshape(probs.shape)
        delta = grad_dot_out[:, :, :, rows_at]
        scores_grad = jnp.where(visible, probs * (probs_grad - delta), 0.0) * scale
        scores_grad = _grouped(scores_grad.astype(q.dtype))
        query_grad = _product("bhqk,bhkd->bhqd", scores_grad, k[:, :, :end])
        query_grads.append(query_grad.reshape(*probs.shape[:-1], head_dim).astype(q.dtype))
        key_grad_t = key_grad_t.at[..., :end].add(
            _product("bhdq,bhqk->bhdk", _small_first(rows), scores_grad)
        )
    key_grad, value_grad = (g.swapaxes(2, 3).astype(k.dtype) for g in (key_grad_t, value_grad_t))
    return jnp.concatenate(query_grads, axis=3), key_grad, value_grad, None, None


def _small_first(rows: jax.Array) -> jax.Array:
    """[b, h, q, d] -> [b, h, d, q] as its own array: XLA folds a bare transpose into the
    product, whose first operand then has its contracted axis first, off the library path."""
    return jax.lax.optimization_barrier(rows.swapaxes(2, 3))


_attention.defvjp(_forward, _backward)
