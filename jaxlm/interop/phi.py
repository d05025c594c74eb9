"""Phi-1, Phi-1.5 and Phi-2 (`PhiForCausalLM`) <-> jaxlm's GPT with parallel blocks whose
attention and MLP read one LayerNorm (`model.block_layout: parallel_shared_norm`), rotary
positions on a share of each head (`model.rotary_dim`), a plain MLP, biases everywhere and a
bias on the logits.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.interop import llama, rope
from jaxlm.interop.hf_config import (
    activation_from_hf,
    decoder_to_hf,
    head_mismatches,
    mismatches,
    require,
)
from jaxlm.interop.mapping import (
    Rule,
    block_projections,
    norm,
    output_head,
    pad_vocab,
    tensor,
)

MODEL_TYPE = "phi"
ARCHITECTURES = ("PhiForCausalLM",)
IGNORED = re.compile(r"^lm_head\.weight$")  # the output head when tied
NEEDS = {
    "family": "gpt",
    "position_embedding": "rotary",
    "norm": "layernorm",
    "norm_position": "pre",
    "block_layout": "parallel_shared_norm",
    "mlp_type": "plain",
    "scale_embeddings": False,
    "output_bias": True,
    "use_bias": True,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "qk_layernorm", False, False)
    embed_dim, heads = hf.get("hidden_size", 2048), hf.get("num_attention_heads", 32)
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = embed_dim // heads
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 51200),
        max_len=hf.get("max_position_embeddings", 2048),
        num_layers=hf.get("num_hidden_layers", 24),
        embed_dim=embed_dim,
        num_heads=heads,
        num_kv_heads=None if kv_heads == heads else kv_heads,
        mlp_dim=hf.get("intermediate_size", 8192),
        activation=activation_from_hf(hf.get("hidden_act", "gelu_new")),
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        block_layout="parallel_shared_norm",
        position_embedding="rotary",
        rotary_dim=rope.rotary_dim_from_hf(hf, head_dim, "partial_rotary_factor", 0.5),
        **rope.rope_from_hf(hf),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        output_bias=True,
        use_bias=True,
        dropout_rate=hf.get("resid_pdrop", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS, free=("rotary_dim",)) + head_mismatches(cfg, grouped_query=True)


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **decoder_to_hf(cfg, MODEL_TYPE, ARCHITECTURES[0]),
        "num_key_value_heads": cfg.num_kv_heads or cfg.num_heads,
        "layer_norm_eps": cfg.norm_eps,
        "rope_parameters": rope.rope_to_hf(cfg),
        "partial_rotary_factor": rope.rotary_share(cfg),  # the keys of transformers before 5
        "rope_theta": cfg.rope_base,
        "qk_layernorm": False,
        "resid_pdrop": cfg.dropout_rate,
        "embd_pdrop": cfg.dropout_rate,
    }


BLOCK, STACK = llama.BLOCK, llama.STACK  # Llama's tensor names


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    layers = cfg.num_layers
    vocab = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size)
    result = [
        tensor("model.embed_tokens.weight", "token_embed/embedding", vocab),
        *norm(f"{BLOCK}input_layernorm", f"{STACK}self_attention_norm", layers=layers),
        *llama.query_key_value(cfg, bias=True),
        *block_projections(
            {"out": f"{BLOCK}self_attn.dense", "wi": f"{BLOCK}mlp.fc1", "wo": f"{BLOCK}mlp.fc2"},
            STACK,
            cfg,
            layers=layers,
        ),
        *norm("model.final_layernorm", "decoder/final_norm"),
        tensor("lm_head.bias", "output_bias/bias", vocab),
    ]
    if not cfg.tie_embeddings:
        result.append(output_head(cfg))
    return result
