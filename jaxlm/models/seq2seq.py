"""Encoder-decoder Transformer (Vaswani et al. 2017; with `model.position_embedding: relative`,
T5's position bias): shared vocabulary and embeddings."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.layers.masks import attention_mask
from jaxlm.layers.relative_positions import RelativePositionBias
from jaxlm.layers.transformer import TransformerStack
from jaxlm.models.common import (
    OutputBias,
    cached_positions,
    causal_self_attention,
    default_positions,
    embed_inputs,
    output_head,
    output_logits,
    position_module,
    stack_output,
    token_embedding,
)


class EncoderDecoder(nn.Module):
    """source tokens + shifted target tokens -> target logits.

    One embedding table serves the source, the target and (tied, by default) the output
    projection.
    `encode` and `decode` are separate so decoding can encode the source once.
    """

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = token_embedding(cfg, name="token_embed")
        self.source_positions = position_module(cfg, name="source_position_embed")
        self.target_positions = position_module(cfg, name="target_position_embed")
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.output_bias = OutputBias(cfg, name="output_bias") if cfg.output_bias else None
        self.lm_head = None if cfg.tie_embeddings else output_head(cfg)
        self.encoder = TransformerStack(cfg, cfg.num_layers, name="encoder")
        self.decoder = TransformerStack(
            cfg, cfg.decoder_layers, cross_attention=True, name="decoder"
        )
        if cfg.position_embedding == "relative":
            self.encoder_position_bias = self._position_bias(True, "encoder_position_bias")
            self.decoder_position_bias = self._position_bias(False, "decoder_position_bias")

    def _position_bias(self, bidirectional: bool, name: str) -> RelativePositionBias:
        cfg = self.cfg
        return RelativePositionBias(
            cfg.num_heads,
            cfg.relative_buckets,
            cfg.relative_max_distance,
            bidirectional,
            cfg.init_std,
            cfg.weight_dtype,
            name=name,
        )

    def encode(self, source, source_segments=None, source_positions=None, *, deterministic=True):
        """source: [batch, source_length] -> [batch, source_length, embed]."""
        bias = None
        if self.cfg.position_embedding == "relative":  # one bias for rows of default positions
            rows = default_positions(source[:1]) if source_positions is None else source_positions
            bias = self.encoder_position_bias(rows, rows)
        if source_positions is None:
            source_positions = default_positions(source)
        source_segments = jnp.ones_like(source) if source_segments is None else source_segments
        x = embed_inputs(
            self.cfg,
            self.embed,
            self.source_positions,
            self.dropout,
            source,
            source_positions,
            deterministic,
        )
        mask = attention_mask(source_segments, source_segments, causal=False)
        return self.encoder(x, mask, source_positions, deterministic=deterministic, bias=bias)

    def decode(
        self,
        encoded: jax.Array,
        target_inputs: jax.Array,
        source_segments: jax.Array | None = None,
        target_segments: jax.Array | None = None,
        target_positions: jax.Array | None = None,
        *,
        deterministic: bool = True,
        cache: dict | None = None,
    ):
        """encoded: [batch, source_length, embed]; target_inputs: [batch, target_length].

        Returns float32 logits [batch, target_length, padded_vocab_size]. With a key/value
        `cache` (`empty_cache`), the targets continue the cached ones and (logits, cache) is
        returned.
        """
        default_rows = target_positions is None  # then one relative position bias serves all
        if target_positions is None:
            target_positions = default_positions(target_inputs)
        if target_segments is None:
            target_segments = jnp.ones_like(target_inputs)
        if source_segments is None:
            source_segments = jnp.ones(encoded.shape[:2], jnp.int32)
        x = embed_inputs(
            self.cfg,
            self.embed,
            self.target_positions,
            self.dropout,
            target_inputs,
            target_positions,
            deterministic,
        )
        self_mask, stack_cache, cache = causal_self_attention(target_inputs, target_segments, cache)
        cross_mask = attention_mask(target_segments, source_segments, causal=False)
        bias = None
        if self.cfg.position_embedding == "relative":
            query_positions = target_positions[:1] if default_rows else target_positions
            key_positions = query_positions
            if cache is not None:  # the cached targets, left to right from position 0
                key_positions = cached_positions(cache)
            bias = self.decoder_position_bias(query_positions, key_positions)
        out = self.decoder(
            x,
            self_mask,
            target_positions,
            encoded,
            cross_mask,
            deterministic=deterministic,
            bias=bias,
            **stack_cache,
        )
        x, cache = stack_output(out, cache)
        logits = output_logits(self.cfg, self.embed, x, self.output_bias, self.lm_head)
        return logits if cache is None else (logits, cache)

    def __call__(
        self,
        source: jax.Array,
        target_inputs: jax.Array,
        source_segments: jax.Array | None = None,
        target_segments: jax.Array | None = None,
        source_positions: jax.Array | None = None,
        target_positions: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        encoded = self.encode(
            source, source_segments, source_positions, deterministic=deterministic
        )
        return self.decode(
            encoded,
            target_inputs,
            source_segments,
            target_segments,
            target_positions,
            deterministic=deterministic,
        )
