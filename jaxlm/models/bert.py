"""BERT-style bidirectional encoder with pooler and optional MLM, NSP and classifier heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.layers.activations import ACTIVATIONS
from jaxlm.layers.embeddings import gathered_table
from jaxlm.layers.linear import DenseGeneral
from jaxlm.layers.masks import attention_mask
from jaxlm.layers.transformer import ACTIVATION_AXES, TransformerStack, make_norm
from jaxlm.models.common import (
    default_positions,
    mask_vocab_padding,
    position_module,
    prepend_prompt,
    prompt_attention,
    soft_prompt,
    token_embedding,
)


class Bert(nn.Module):
    """Encoder + pooler (the released BERT checkpoints); heads from `cfg.heads`."""

    cfg: ModelConfig

    def _dense(self, features: int, axes: tuple[str, str], name: str) -> DenseGeneral:
        cfg = self.cfg
        return DenseGeneral(
            (features,),
            axes,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            kernel_init=nn.initializers.normal(cfg.init_std),
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        type_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        """tokens, type_ids (sentence A/B), segment_ids (0 = padding): [batch, length].

        Returns `hidden` [batch, length, embed], `pooled` [batch, embed] and, per head,
        `mlm_logits` [batch, length, padded_vocab], `nsp_logits` [batch, 2],
        `class_logits` [batch, num_classes] (logits in float32). A `prompt` parameter (prompt
        tuning) joins the summed input embeddings before the embedding norm (`prompt_attention`).
        """
        cfg = self.cfg
        positions = default_positions(tokens) if positions is None else positions
        segment_ids = jnp.ones_like(tokens) if segment_ids is None else segment_ids
        type_ids = jnp.zeros_like(tokens) if type_ids is None else type_ids

        embed = token_embedding(cfg)
        x = embed(tokens)
        positions_embed = position_module(cfg)
        if positions_embed is not None:
            x = x + positions_embed(positions)
        type_table = self.param(
            "type_embed",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("type", "embed")),
            (cfg.type_vocab_size, cfg.embed_dim),
            cfg.weight_dtype,
        )
        x = x + jnp.take(gathered_table(type_table, "type", x.dtype), type_ids, axis=0)
        if (prompt := soft_prompt(self)) is not None:
            x = prepend_prompt(x, prompt)
        if cfg.norm_position == "post":
            x = make_norm(cfg, "embed_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x.astype(cfg.compute_dtype), ACTIVATION_AXES)
        mask = attention_mask(segment_ids, segment_ids, causal=False)
        if prompt is not None:
            mask, positions = prompt_attention(
                mask, positions, segment_ids, prompt.shape[0], causal=False
            )
        x = TransformerStack(cfg, cfg.num_layers, name="encoder")(
            x, mask, positions, deterministic=deterministic
        )
        if prompt is not None:  # the heads read the tokens' states; [CLS] is first again
            x = x[:, prompt.shape[0] :]
        pooled = jnp.tanh(self._dense(cfg.embed_dim, ("embed", "embed_out"), "pooler")(x[:, 0]))
        outputs = {"hidden": x, "pooled": pooled}

        if "mlm" in cfg.heads:
            h = self._dense(cfg.embed_dim, ("embed", "embed_out"), "mlm_transform")(x)
            h = make_norm(cfg, "mlm_norm")(ACTIVATIONS[cfg.activation](h))
            bias = self.param(
                "mlm_bias",
                nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                (cfg.padded_vocab_size,),
                cfg.weight_dtype,
            )
            logits = (embed.attend(h) + bias.astype(h.dtype)).astype(jnp.float32)
            outputs["mlm_logits"] = mask_vocab_padding(logits, cfg.vocab_size)
        if "nsp" in cfg.heads:
            nsp = self._dense(2, ("embed", "classes"), "nsp_head")(pooled)
            outputs["nsp_logits"] = nsp.astype(jnp.float32)
        if "classifier" in cfg.heads:
            h = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
            logits = self._dense(cfg.num_classes, ("embed", "classes"), "classifier")(h)
            outputs["class_logits"] = logits.astype(jnp.float32)
        return outputs
