"""Pure functional Flax (Linen) building blocks; they know nothing of meshes, files or training."""

from jaxlm.layers.attention import dot_product_attention, reference_attention
from jaxlm.layers.embeddings import (
    LearnedPositions,
    SinusoidalPositions,
    TokenEmbedding,
    apply_rotary,
    sinusoidal_table,
)
from jaxlm.layers.masks import attention_mask, causal_mask, padding_mask, segment_mask
from jaxlm.layers.mlp import Mlp
from jaxlm.layers.moe import MoeMlp
from jaxlm.layers.multi_head_attention import MultiHeadAttention
from jaxlm.layers.transformer import TransformerBlock, TransformerStack

__all__ = [
    "LearnedPositions",
    "Mlp",
    "MoeMlp",
    "MultiHeadAttention",
    "SinusoidalPositions",
    "TokenEmbedding",
    "TransformerBlock",
    "TransformerStack",
    "apply_rotary",
    "attention_mask",
    "causal_mask",
    "dot_product_attention",
    "padding_mask",
    "reference_attention",
    "segment_mask",
    "sinusoidal_table",
]
