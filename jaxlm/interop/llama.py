"""Llama (`LlamaForCausalLM`) <-> jaxlm's GPT with rotary positions, RMSNorm and a gated MLP.

HF stores Llama's query and key projections in the rotate-half layout (each head's rotary
pairs are features i and i + head_dim / 2), which is the layout of jaxlm's `apply_rotary`: the
weights convert with transposes and head reshapes only.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError
from jaxlm.interop import rope
from jaxlm.interop.hf_config import activation_from_hf, decoder_to_hf, mismatches
from jaxlm.interop.mapping import (
    IDENTITY,
    Rule,
    linear,
    norm,
    output_head,
    pad_vocab,
    reshape,
    tensor,
)

MODEL_TYPE = "llama"
ARCHITECTURES = ("LlamaForCausalLM",)
# Precomputed rotary frequencies of older checkpoints; the output head when tied.
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$|^lm_head\.weight$")
NEEDS = {
    "family": "gpt",
    "position_embedding": "rotary",
    "norm": "rmsnorm",
    "norm_position": "pre",
    "mlp_type": "gated",
    "scale_embeddings": False,
    "output_bias": False,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    bias = hf.get("attention_bias", False)
    if hf.get("mlp_bias", False) != bias:
        raise ConversionError(
            "config.json: attention_bias and mlp_bias differ (jaxlm's use_bias covers both)"
        )
    embed_dim, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or embed_dim // heads
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 32000),
        max_len=hf.get("max_position_embeddings", 2048),
        num_layers=hf.get("num_hidden_layers", 32),
        embed_dim=embed_dim,
        num_heads=heads,
        num_kv_heads=None if kv_heads == heads else kv_heads,
        head_dim=None if head_dim * heads == embed_dim else head_dim,
        mlp_dim=hf.get("intermediate_size", 11008),
        mlp_type="gated",
        activation=activation_from_hf(hf.get("hidden_act", "silu")),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_position="pre",
        position_embedding="rotary",
        **rope.rope_from_hf(hf),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        use_bias=bias,
        dropout_rate=0.0,
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS)


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **decoder_to_hf(cfg, MODEL_TYPE, ARCHITECTURES[0]),
        "num_key_value_heads": cfg.num_kv_heads or cfg.num_heads,
        "head_dim": cfg.resolved_head_dim,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": rope.rope_to_hf(cfg),
        "attention_bias": cfg.use_bias,
        "mlp_bias": cfg.use_bias,
    }


BLOCK, STACK = "model.layers.{i}.", "decoder/layers/"
ATTENTION, MLP = f"{STACK}self_attention/", f"{STACK}mlp/"


def query_key_value(cfg: ModelConfig, bias: bool) -> list[Rule]:
    """The query, key and value projections, one HF tensor each (`self_attn.{q,k,v}_proj`)."""
    d, head_dim = cfg.embed_dim, cfg.resolved_head_dim
    heads, kv_heads = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    projection = dict(bias=bias, layers=cfg.num_layers)
    return [
        rule
        for name, path, count in (
            ("q", "query", heads),
            ("k", "key", kv_heads),
            ("v", "value", kv_heads),
        )
        for rule in linear(
            f"{BLOCK}self_attn.{name}_proj",
            f"{ATTENTION}{path}",
            (d,),
            (count, head_dim),
            **projection,
        )
    ]


def down_projection(cfg: ModelConfig) -> list[Rule]:
    """The MLP's `down_proj`."""
    per_layer = dict(bias=cfg.use_bias, layers=cfg.num_layers)
    return linear(
        f"{BLOCK}mlp.down_proj", f"{MLP}wo", (cfg.mlp_dim,), (cfg.embed_dim,), **per_layer
    )


def input_projections(cfg: ModelConfig) -> list[Rule]:
    """The query, key, value, gate, up and down projections, one HF tensor each."""
    per_layer = dict(bias=cfg.use_bias, layers=cfg.num_layers)
    mlp = [
        rule
        for name, path in (("gate", "wi_gate"), ("up", "wi"))
        for rule in linear(
            f"{BLOCK}mlp.{name}_proj", f"{MLP}{path}", (cfg.embed_dim,), (cfg.mlp_dim,), **per_layer
        )
    ]
    return query_key_value(cfg, cfg.use_bias or cfg.qkv_bias) + mlp + down_projection(cfg)


# HF block norm -> jaxlm block norm: before attention, before the MLP.
BLOCK_NORMS = {"input_layernorm": "self_attention_norm", "post_attention_layernorm": "mlp_norm"}


def rules(
    cfg: ModelConfig,
    names: set[str] | None = None,
    hf: dict | None = None,
    projections=None,
    block_norms: dict[str, str] = BLOCK_NORMS,
) -> list[Rule]:
    """The tensors of Llama's layout; `projections(cfg)` gives the rules of the query, key and
    value projections and the MLP (default `input_projections`), `block_norms` the names of
    each block's norms (RMSNorms, or LayerNorms with a bias: StableLM's)."""
    d, head_dim, layers = cfg.embed_dim, cfg.resolved_head_dim, cfg.num_layers
    per_layer = dict(bias=cfg.use_bias, layers=layers)
    result = [
        tensor(
            "model.embed_tokens.weight",
            "token_embed/embedding",
            pad_vocab(cfg.vocab_size, cfg.padded_vocab_size),
        ),
        *(projections or input_projections)(cfg),
        *linear(
            f"{BLOCK}self_attn.o_proj",
            f"{ATTENTION}out",
            (cfg.num_heads, head_dim),
            (d,),
            **per_layer,
        ),
    ]
    if cfg.norm_scale:  # OLMo 1's norms have no parameters
        norm_bias = cfg.norm == "layernorm" and cfg.norm_bias
        for hf_norm, name in block_norms.items():
            result += norm(f"{BLOCK}{hf_norm}", f"{STACK}{name}", bias=norm_bias, layers=layers)
        result += norm("model.norm", "decoder/final_norm", bias=norm_bias)
    if cfg.qk_norm and cfg.qk_norm_scope != "each_head":  # per head (Qwen3), all heads (OLMo 2)
        kv_heads = cfg.num_kv_heads or cfg.num_heads
        for hf_name, name, heads in (("q", "query", cfg.num_heads), ("k", "key", kv_heads)):
            shape = IDENTITY
            if cfg.qk_norm_scope == "heads":
                shape = reshape((heads * head_dim,), (heads, head_dim))
            hf_norm = f"{BLOCK}self_attn.{hf_name}_norm.weight"
            result.append(tensor(hf_norm, f"{ATTENTION}{name}_norm/scale", shape, layers=layers))
    if not cfg.tie_embeddings:
        result.append(output_head(cfg))
    return result
