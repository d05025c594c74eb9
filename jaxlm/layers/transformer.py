"""Transformer blocks (pre-LN, post-LN, sandwich, output-normalized or parallel) and layer
stacks scanned over depth with remat."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.layers.embeddings import (
    apply_rotary,
    longrope_attention_factor,
    rotary_frequencies,
    yarn_attention_factor,
)
from jaxlm.layers.matmul import BATCHED_PRODUCT, PRODUCT
from jaxlm.layers.mlp import Mlp, output_init
from jaxlm.layers.moe import MoeMlp
from jaxlm.layers.multi_head_attention import MultiHeadAttention
from jaxlm.layers.norms import LayerNorm, RMSNorm, rms_scale

_policies = jax.checkpoint_policies
REMAT_POLICIES = {  # the matmul names: jaxlm.layers.matmul's products (bfloat16 on the CPU)
    "full": _policies.nothing_saveable,
    "dots": _policies.save_from_both_policies(
        _policies.checkpoint_dots, _policies.save_only_these_names(PRODUCT, BATCHED_PRODUCT)
    ),
    "dots_no_batch": _policies.save_from_both_policies(
        _policies.dots_with_no_batch_dims_saveable, _policies.save_only_these_names(PRODUCT)
    ),
}

ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
    """LayerNorm or RMSNorm (scaling by 1 + scale with `norm_unit_offset`) with logically named
    parameters."""
    common = dict(
        epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, name=name
    )
    if cfg.norm == "rmsnorm":
        scale = rms_scale(cfg.norm_unit_offset, "norm")
        return RMSNorm(**scale, use_scale=cfg.norm_scale, **common)
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("norm",))
    learned = dict(use_scale=cfg.norm_scale, use_bias=cfg.norm_scale and cfg.norm_bias)
    return LayerNorm(scale_init=scale_init, bias_init=bias_init, **learned, **common)


def rotary_frequencies_of(cfg: ModelConfig, positions: jax.Array | None = None):
    """The rotary frequencies of `cfg`'s heads, with its scaling (`rotary_frequencies`). LongRoPE
    divides them by its short factors while every one of `positions` is below
    `rope_original_max_len`, else by its long ones, as transformers picks per forward pass."""
    settings = (
        cfg.resolved_rotary_dim,
        cfg.rope_base,
        cfg.rope_scaling,
        cfg.rope_scaling_factor,
        cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor,
        cfg.rope_original_max_len,
        cfg.rope_beta_fast,
        cfg.rope_beta_slow,
    )
    if cfg.rope_scaling != "longrope":
        return rotary_frequencies(*settings)
    short, long = (
        rotary_frequencies(*settings, factors)
        for factors in (cfg.rope_short_factors, cfg.rope_long_factors)
    )
    return jnp.where(jnp.max(positions) >= cfg.rope_original_max_len, long, short)


def rotary_amplitude(cfg: ModelConfig) -> float:
    """The scale of rotated queries and keys: YaRN's or LongRoPE's attention factor, else 1."""
    if cfg.rope_scaling not in ("yarn", "longrope"):
        return 1.0
    if cfg.rope_attention_factor is not None:
        return cfg.rope_attention_factor
    if cfg.rope_scaling == "longrope":
        return longrope_attention_factor(cfg.rope_scaling_factor, cfg.rope_original_max_len)
    return yarn_attention_factor(cfg.rope_scaling_factor)


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, MLP; each a residual sublayer, pre-LN, post-LN
    or sandwiched between two norms (`{name}_norm` before, `{name}_post_norm` after), or with
    only the second (`model.norm_position: output`). Parallel blocks (`model.block_layout`) add
    self-attention and the MLP to the same input.

    A scan body: `((x, kv_cache), mask, positions, encoded, cross_mask, deterministic,
    decode_index, bias, full_mask, full_attention) -> ((x, kv_cache), None)` with x: [batch,
    length, embed], mask: [batch, 1, length, keys] (keys = length, or the cache length when
    decoding), positions: [batch, length], encoded: [batch, source_length, embed], cross_mask:
    [batch, 1, length, source_length], bias: None, [batch, heads, length, keys] or an
    `AlibiBias` (its positions), added to the self-attention scores. `kv_cache` (None unless
    decoding) is this block's keys and values, which it reads and writes. With `full_attention`
    (a bool, or a traced boolean scalar) true, self-attention attends under `full_mask` instead
    of `mask`, and false, rotates by `model.rope_local_base` when set.

    Parameters `prefix_key` and `prefix_value` [prefix_length, kv_heads, head_dim], when present
    (prefix tuning adds them, `init` never does), are keys and values that self-attention attends
    to besides the inputs'.
    """

    cfg: ModelConfig
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        carry,
        mask,
        positions,
        encoded=None,
        cross_mask=None,
        deterministic=True,
        decode_index=None,
        bias=None,
        full_mask=None,
        full_attention=None,
    ):
        x, kv_cache = carry
        cfg = self.cfg

        def residual(name: str, sublayer):
            nonlocal x
            if cfg.norm_position in ("pre", "sandwich", "output"):
                y = x if cfg.norm_position == "output" else make_norm(cfg, f"{name}_norm")(x)
                y = sublayer(y)
                if cfg.norm_position in ("sandwich", "output"):
                    y = make_norm(cfg, f"{name}_post_norm")(y)
                x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
            else:
                y = sublayer(x)
                x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
                x = make_norm(cfg, f"{name}_norm")(x)
            x = nn.with_logical_constraint(x, ACTIVATION_AXES)

        attention = functools.partial(
            MultiHeadAttention,
            num_heads=cfg.num_heads,
            head_dim=cfg.resolved_head_dim,
            use_bias=cfg.use_bias if cfg.attention_bias is None else cfg.attention_bias,
            qkv_bias=cfg.qkv_bias,
            qk_norm_eps=cfg.norm_eps if cfg.qk_norm else None,
            qk_norm_scope=cfg.qk_norm_scope,
            qk_norm_kind=cfg.norm,
            clip_qkv=cfg.clip_qkv,
            qk_norm_unit_offset=cfg.norm_unit_offset,
            dropout_rate=cfg.attention_dropout_rate,
            scale=cfg.attention_scale,
            softcap=cfg.attention_softcap,
            backend=cfg.attention_backend,
            kernel_init=nn.initializers.normal(cfg.init_std),
            out_kernel_init=output_init(cfg),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
        )
        rotary = None
        if cfg.position_embedding == "rotary":
            frequencies, amplitude = rotary_frequencies_of(cfg, positions), rotary_amplitude(cfg)
            if cfg.rope_local_base is not None:  # windowed layers' own, unscaled (Gemma 3)
                local = rotary_frequencies(cfg.resolved_rotary_dim, cfg.rope_local_base)
                frequencies = jnp.where(full_attention, frequencies, local)
                amplitude = jnp.where(full_attention, amplitude, 1.0)
            rotary = functools.partial(apply_rotary, frequencies=frequencies, amplitude=amplitude)

        prefix = None
        if self.has_variable("params", "prefix_key"):
            prefix = tuple(self.get_variable("params", f"prefix_{n}") for n in ("key", "value"))

        def self_attention(h):
            nonlocal kv_cache
            out = attention(num_kv_heads=cfg.num_kv_heads, name="self_attention")(
                h,
                h,
                mask,
                rotary=rotary,
                q_positions=positions,
                kv_positions=positions,
                deterministic=deterministic,
                kv_cache=kv_cache,
                decode_index=decode_index,
                prefix=prefix,
                bias=bias,
                full_mask=full_mask,
                full_attention=full_attention,
            )
            if kv_cache is not None:
                out, kv_cache = out
            return out

        if cfg.num_experts:
            experts = MoeMlp(cfg, name="mlp")
            mlp = functools.partial(experts, deterministic=deterministic)
        else:
            mlp = Mlp(cfg, name="mlp")
        if cfg.block_layout != "sequential":  # x + attention(norm(x)) + mlp(norm'(x))
            attention_input = make_norm(cfg, "self_attention_norm")(x)
            mlp_input = attention_input
            if cfg.block_layout == "parallel":
                mlp_input = make_norm(cfg, "mlp_norm")(x)
            dropout = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=deterministic)
            x = x + dropout(self_attention(attention_input)) + dropout(mlp(mlp_input))
            return (nn.with_logical_constraint(x, ACTIVATION_AXES), kv_cache), None
        residual("self_attention", self_attention)
        if self.cross_attention:
            residual(
                "cross_attention",
                lambda h: attention(name="cross_attention")(
                    h, encoded, cross_mask, deterministic=deterministic
                ),
            )
        residual("mlp", mlp)
        return (x, kv_cache), None


class TransformerStack(nn.Module):
    """`num_layers` blocks stacked with `nn.scan` (parameters get a leading `layers` axis),
    each wrapped in `nn.remat` with the configured policy; stacks that are not post-LN end with
    a norm. Every block adds `bias` (T5's relative position bias, or an `AlibiBias`), when
    given, to its self-attention scores. With `full_mask` (`model.global_attention_every`
    layers), every Nth block attends under it instead of `mask`: the scan gives each block
    whether it is one.

    Decoding (`kv_cache` given: a tuple of keys and a tuple of values, one array per layer)
    runs the blocks one after the other instead, block `i` with the parameters `layers_{i}`
    that `jaxlm.decoding.cache.unstack_layers` splits out of the stack, and returns (x, kv_cache).
    Split once before the decoding loop, no step copies a layer's weights or cache out of a
    stacked array (GPT-2 small's greedy decoding on the CPU spent 40% of its time on those
    copies)."""

    cfg: ModelConfig
    num_layers: int
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x,
        mask,
        positions,
        encoded=None,
        cross_mask=None,
        deterministic=True,
        kv_cache=None,
        decode_index=None,
        bias=None,
        full_mask=None,
    ):
        cfg = self.cfg
        shared = (positions, encoded, cross_mask, deterministic, decode_index, bias)
        full_layers = None if full_mask is None else np.asarray(cfg.full_attention_layers)
        if kv_cache is not None:
            caches = []
            for i, layer_cache in enumerate(zip(*kv_cache, strict=True)):
                block = TransformerBlock(cfg, self.cross_attention, name=f"layers_{i}")
                full = None if full_layers is None else bool(full_layers[i])
                (x, layer_cache), _ = block((x, layer_cache), mask, *shared, full_mask, full)
                caches.append(layer_cache)
            kv_cache = tuple(zip(*caches, strict=True))
        else:
            block = TransformerBlock
            if cfg.remat_policy != "none":
                block = nn.remat(
                    block,
                    policy=REMAT_POLICIES[cfg.remat_policy],
                    prevent_cse=False,
                    static_argnums=(6,),  # deterministic, counting self
                )
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * 8 + (nn.broadcast if full_layers is None else 0,),
                length=self.num_layers,
                unroll=cfg.scan_unroll or self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            (x, _), _ = stack(cfg, cross_attention=self.cross_attention, name="layers")(
                (x, None), mask, *shared, full_mask, full_layers
            )
        if cfg.norm_position != "post":
            x = make_norm(cfg, "final_norm")(x)
        return x if kv_cache is None else (x, kv_cache)
