"""Falcon (`FalconForCausalLM`: Falcon 7B, 40B, 180B, Falcon 2 11B) <-> jaxlm's GPT with
LayerNorms, rotary positions, an exact-GELU MLP and no biases (`bias: false`), its blocks
parallel with one norm (`input_layernorm`) or two (`ln_attn`, `ln_mlp`: the new decoder
architecture), or sequential (`parallel_attn: false`).

The query, key and value projections are one tensor laid out key/value group by group
(`mapping.grouped_qkv_linear`): multi-query Falcon 7B's one group holds every query head, the
new architecture's groups their share of them, the old one without multi-query one query head
each. ALiBi models (Falcon-RW) are refused.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError
from jaxlm.interop import bloom, rope
from jaxlm.interop.hf_config import decoder_to_hf, head_mismatches, mismatches, require
from jaxlm.interop.mapping import (
    Rule,
    norm,
    output_head,
    pad_vocab,
    tensor,
)

MODEL_TYPE = "falcon"
ARCHITECTURES = ("FalconForCausalLM",)
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$|^lm_head\.weight$")
NEEDS = {
    "family": "gpt",
    "position_embedding": "rotary",
    "norm": "layernorm",
    "norm_position": "pre",
    "mlp_type": "plain",
    "activation": "gelu_exact",
    "scale_embeddings": False,
    "output_bias": False,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}
# block_layout -> the block norms' names
NORMS = {
    "parallel": {"ln_attn": "self_attention_norm", "ln_mlp": "mlp_norm"},
    "parallel_shared_norm": {"input_layernorm": "self_attention_norm"},
    "sequential": {
        "input_layernorm": "self_attention_norm",
        "post_attention_layernorm": "mlp_norm",
    },
}


def _layout(hf: dict) -> tuple[str, int]:
    """(block_layout, key/value heads) as transformers' Falcon reads them."""
    heads = hf.get("num_attention_heads", 71)
    if hf.get("new_decoder_architecture", False):
        norms = hf.get("num_ln_in_parallel_attn") or 2
        kv_heads = hf.get("num_kv_heads") or heads
        return ("parallel" if norms == 2 else "parallel_shared_norm"), kv_heads
    kv_heads = 1 if hf.get("multi_query", True) else heads
    return ("parallel_shared_norm" if hf.get("parallel_attn", True) else "sequential"), kv_heads


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    if hf.get("alibi", False):
        raise ConversionError(
            "config.json: alibi=True is not supported (ALiBi positions: Falcon's biases, divided "
            "by sqrt(head_dim), are not jaxlm's)"
        )
    require(hf, "activation", "gelu", "gelu")
    embed_dim, heads = hf.get("hidden_size", 4544), hf.get("num_attention_heads", 71)
    layout, kv_heads = _layout(hf)
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 65024),
        max_len=hf.get("max_position_embeddings", 2048),
        num_layers=hf.get("num_hidden_layers", 32),
        embed_dim=embed_dim,
        num_heads=heads,
        num_kv_heads=None if kv_heads == heads else kv_heads,
        mlp_dim=hf.get("ffn_hidden_size") or 4 * embed_dim,
        activation="gelu_exact",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        block_layout=layout,
        position_embedding="rotary",
        **rope.rope_from_hf(hf),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        use_bias=bool(hf.get("bias", False)),
        dropout_rate=hf.get("hidden_dropout", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    free = ("block_layout", "rotary_dim")
    problems = mismatches(cfg, NEEDS, free=free) + head_mismatches(cfg, grouped_query=True)
    if cfg.rotary_dim is not None:
        problems.append(f"model.rotary_dim={cfg.rotary_dim}")
    if cfg.block_layout == "sequential" and cfg.num_kv_heads not in (None, 1, cfg.num_heads):
        problems.append(f"model.num_kv_heads={cfg.num_kv_heads} in sequential blocks")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    kv_heads = cfg.num_kv_heads or cfg.num_heads
    named_otherwise = ("intermediate_size", "hidden_act")  # ffn_hidden_size, activation
    hf = decoder_to_hf(cfg, MODEL_TYPE, ARCHITECTURES[0])
    return {
        **{key: value for key, value in hf.items() if key not in named_otherwise},
        "ffn_hidden_size": cfg.mlp_dim,
        "activation": "gelu",
        "layer_norm_epsilon": cfg.norm_eps,
        "new_decoder_architecture": cfg.block_layout != "sequential",
        "num_ln_in_parallel_attn": 2 if cfg.block_layout == "parallel" else 1,
        "parallel_attn": cfg.block_layout != "sequential",
        "multi_query": kv_heads == 1,
        "num_kv_heads": kv_heads,
        "alibi": False,
        "bias": cfg.use_bias,
        "rope_parameters": rope.rope_to_hf(cfg),
        "rope_theta": cfg.rope_base,
        "hidden_dropout": cfg.dropout_rate,
    }


BLOCK, STACK = bloom.BLOCK, bloom.STACK


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    layers = cfg.num_layers
    result = [
        tensor(
            "transformer.word_embeddings.weight",
            "token_embed/embedding",
            pad_vocab(cfg.vocab_size, cfg.padded_vocab_size),
        ),
        *(
            rule
            for hf_norm, name in NORMS[cfg.block_layout].items()
            for rule in norm(f"{BLOCK}{hf_norm}", f"{STACK}{name}", layers=layers)
        ),
        *bloom.block_linears(cfg, cfg.num_kv_heads or cfg.num_heads, bias=cfg.use_bias),
        *norm("transformer.ln_f", "decoder/final_norm"),
    ]
    if not cfg.tie_embeddings:
        result.append(output_head(cfg))
    return result
