"""Mixture of experts (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021; Mixtral): a
block's MLP replaced by `model.num_experts` MLPs of which a router picks, for each token, the
`model.experts_per_token` with the highest probabilities, their outputs summed weighted by
those probabilities (renormalized to sum to one with `model.router_renormalize`).

Tokens are routed within their row. Each expert takes a buffer of `capacity` tokens per row,
filled in order of preference (every token's first choice before any second choice, earlier
tokens first); the experts run as one batched product over [experts, capacity] buffers, and
the outputs are gathered back. With `capacity` the row's length no token is ever dropped, and
the result equals running each token through its chosen experts. Training with
`model.expert_capacity_factor` c > 0 caps buffers at c x length x experts_per_token /
num_experts tokens: a token over its expert's capacity skips that expert (its residual carries
on), and the experts do about c times the work of the tokens' choices instead of up to
num_experts / experts_per_token times. Evaluation and decoding never drop tokens.

The router's logits, [batch, length, experts] in float32, are sown into the `intermediates`
collection as `router_logits`: the training loss reads them for the load-balancing and router
z-losses (`jaxlm.train.losses.router_losses`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.layers.linear import DenseGeneral
from jaxlm.layers.matmul import einsum
from jaxlm.layers.mlp import hidden_activations, output_init

ROUTER_LOGITS = "router_logits"


def expert_capacity(cfg: ModelConfig, length: int, deterministic: bool) -> int:
    """Tokens each expert takes per row of `length` tokens: all of them (no token dropped)
    unless training with `model.expert_capacity_factor`."""
    factor = cfg.expert_capacity_factor
    if deterministic or not factor:
        return length
    return min(length, math.ceil(factor * length * cfg.experts_per_token / cfg.num_experts))


def routing(expert_ids: jax.Array, num_experts: int, capacity: int):
    """One row's dispatch plan from its tokens' choices `expert_ids` [length, k] (best first).

    Returns (buffer_tokens [num_experts * capacity]: the token in each slot of the experts'
    buffers, `length` where empty; choice_slots [length, k]: the slot of each choice,
    num_experts * capacity where dropped). Slots fill by preference: all first choices (in
    token order), then all second choices, and so on."""
    length, k = expert_ids.shape
    choices = expert_ids.T.reshape(-1)  # first choices first
    chosen = jax.nn.one_hot(choices, num_experts, dtype=jnp.int32)  # [length * k, experts]
    rank = jnp.sum((jnp.cumsum(chosen, axis=0) - 1) * chosen, axis=-1)  # among its expert's
    dropped = num_experts * capacity
    slots = jnp.where(rank < capacity, choices * capacity + rank, dropped)
    tokens = jnp.arange(length * k) % length
    buffer_tokens = jnp.full(dropped + 1, length).at[slots].set(tokens)[:dropped]
    return buffer_tokens, slots.reshape(k, length).T


def _gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [batch, n, d] at `index` [batch, ...] along n, with index n reading zeros."""
    padded = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)
    flat = index.reshape(index.shape[0], -1)
    gathered = jnp.take_along_axis(padded, flat[..., None], axis=1)
    return gathered.reshape(*index.shape, x.shape[-1])


class MoeMlp(nn.Module):
    """The experts' MLPs (`model.mlp_type`, `model.activation`, `model.mlp_dim` each) and their
    router, without biases: [batch, length, embed] -> [batch, length, embed]."""

    cfg: ModelConfig

    def _experts_weight(self, name: str, shape: tuple[int, ...], axes, init) -> jax.Array:
        weight = self.param(
            name, nn.with_logical_partitioning(init, axes), shape, self.cfg.weight_dtype
        )
        return jnp.asarray(weight, self.cfg.compute_dtype)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        experts, k, (batch, length, d) = cfg.num_experts, cfg.experts_per_token, x.shape
        logits = DenseGeneral(
            (experts,),
            ("embed", None),
            use_bias=False,
            kernel_init=nn.initializers.normal(cfg.init_std),
            dtype=jnp.float32,
            param_dtype=cfg.weight_dtype,
            name="router",
        )(x)
        self.sow("intermediates", ROUTER_LOGITS, logits)
        probabilities, expert_ids = jax.lax.top_k(jax.nn.softmax(logits), k)
        if cfg.router_renormalize:
            probabilities /= jnp.sum(probabilities, axis=-1, keepdims=True)

        capacity = expert_capacity(cfg, length, deterministic)
        plan = jax.vmap(routing, in_axes=(0, None, None))
        buffer_tokens, choice_slots = plan(expert_ids, experts, capacity)
        buffers = _gather_rows(x.astype(cfg.compute_dtype), buffer_tokens)
        buffers = buffers.reshape(batch, experts, capacity, d)
        buffers = nn.with_logical_constraint(
            buffers, ("activation_batch", None, None, "activation_embed")
        )

        inner = nn.initializers.normal(cfg.init_std)
        in_axes, out_axes = ("experts", "embed", "mlp"), ("experts", "mlp", "embed")

        def project_in(name: str) -> jax.Array:
            weight = self._experts_weight(name, (experts, d, cfg.mlp_dim), in_axes, inner)
            return einsum("becd,edf->becf", buffers, weight)

        hidden = nn.with_logical_constraint(
            hidden_activations(cfg, project_in), ("activation_batch", None, None, "activation_mlp")
        )
        wo = self._experts_weight("wo", (experts, cfg.mlp_dim, d), out_axes, output_init(cfg))
        outputs = einsum("becf,efd->becd", hidden, wo).reshape(batch, experts * capacity, d)
        chosen = _gather_rows(outputs, choice_slots)  # [batch, length, k, d]
        weights = probabilities.astype(chosen.dtype)
        return jnp.einsum("blkd,blk->bld", chosen, weights)
