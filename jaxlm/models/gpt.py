"""GPT-style decoder-only causal language model (GPT-2 with the default config)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.layers.alibi import AlibiBias
from jaxlm.layers.transformer import TransformerStack, make_norm
from jaxlm.models.common import (
    OutputBias,
    cached_positions,
    causal_self_attention,
    default_positions,
    embed_inputs,
    output_logits,
    position_module,
    prepend_prompt,
    prompt_attention,
    prompt_in_cache,
    soft_prompt,
    stack_output,
    token_embedding,
)


class GPT(nn.Module):
    """tokens -> next-token logits, attending only to earlier tokens of the same segment."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        cache: dict | None = None,
        prefill: bool = False,
    ):
        """tokens, positions, segment_ids: [batch, length] (segment 0 = padding; without
        segment ids, each row is one document with no padding).

        Returns float32 logits [batch, length, padded_vocab_size]. With a key/value `cache`
        (`empty_cache`), the tokens continue the cached sequence and (logits, cache) is returned.
        A `prompt` parameter (prompt tuning) precedes the embedded tokens (`prompt_attention`);
        with a cache, the call that starts it (`prefill`) writes the prompt into it first.
        """
        cfg = self.cfg
        positions = default_positions(tokens) if positions is None else positions
        embed = token_embedding(cfg)
        dropout = nn.Dropout(cfg.dropout_rate)
        x = embed_inputs(
            cfg, embed, position_module(cfg), dropout, tokens, positions, deterministic
        )
        if cfg.embed_norm:
            x = make_norm(cfg, "embed_norm")(x)
        prompt = soft_prompt(self) if cache is None or prefill else None  # else in the cache
        if segment_ids is None and (prompt is not None or cache is not None):
            segment_ids = jnp.ones_like(tokens)  # the prompt and the cache track segments
        if prompt is not None:
            x = prepend_prompt(x, prompt)
            if cache is not None:
                positions, segment_ids = prompt_in_cache(positions, segment_ids, prompt.shape[0])
        mask, stack_cache, cache = causal_self_attention(
            tokens, segment_ids, cache, cfg.sliding_window, full_too=cfg.global_attention_every > 0
        )
        if prompt is not None and cache is None:
            mask, positions = prompt_attention(
                mask, positions, segment_ids, prompt.shape[0], causal=True
            )
        bias = None
        if cfg.position_embedding == "alibi":
            keys = positions if cache is None else cached_positions(cache)
            bias = AlibiBias(positions, keys, cfg.num_heads)
        out = TransformerStack(cfg, cfg.num_layers, name="decoder")(
            x, mask, positions, deterministic=deterministic, bias=bias, **stack_cache
        )
        x, cache = stack_output(out, cache)
        if prompt is not None:
            x = x[:, prompt.shape[0] :]
        output_bias = OutputBias(cfg, name="output_bias") if cfg.output_bias else None
        logits = output_logits(cfg, embed, x, output_bias)
        return logits if cache is None else (logits, cache)
