"""MPT (`MptForCausalLM`: MPT-7B, MPT-30B and their instruct and chat models) <-> jaxlm's GPT with
ALiBi attention biases (`model.position_embedding: alibi`), LayerNorms without biases
(`model.norm_bias: false`), no biases elsewhere, an exact-GELU MLP, the output head tied to the
embeddings and optionally queries, keys and values clipped (`model.clip_qkv`).

The query, key and value projections are one tensor, the three in a row (`mapping.fused_linear`).
MPT's ALiBi slopes are BLOOM's (jaxlm's) where the head count is a power of two, as in every
released MPT model; other counts are refused.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError
from jaxlm.interop.hf_config import head_mismatches, mismatches, require
from jaxlm.interop.mapping import Rule, block_projections, fused_linear, norm, pad_vocab, tensor

MODEL_TYPE = "mpt"
ARCHITECTURES = ("MptForCausalLM",)
IGNORED = re.compile(r"^lm_head\.weight$")  # tied to the embeddings
NEEDS = {
    "family": "gpt",
    "position_embedding": "alibi",
    "norm": "layernorm",
    "norm_bias": False,
    "norm_position": "pre",
    "mlp_type": "plain",
    "activation": "gelu_exact",
    "scale_embeddings": False,
    "tie_embeddings": True,
    "output_bias": False,
    "use_bias": False,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}
FREE = ("clip_qkv", "attention_scale")
# transformers' MptAttentionConfig defaults, for keys attn_config lacks
ATTENTION_DEFAULTS = {
    "alibi": True,
    "alibi_bias_max": 8,
    "qk_ln": False,
    "prefix_lm": False,
    "attn_type": "multihead_attention",
    "clip_qkv": None,
    "softmax_scale": None,
    "attn_pdrop": 0,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    attention = {**ATTENTION_DEFAULTS, **(hf.get("attn_config") or {})}
    for key in ("alibi", "alibi_bias_max", "qk_ln", "prefix_lm", "attn_type"):
        require(attention, key, ATTENTION_DEFAULTS[key], ATTENTION_DEFAULTS[key])
    require(hf, "no_bias", True, True)
    require(hf, "expansion_ratio", 4, 4)  # transformers' MLP is 4 x d_model wide, whatever it says
    require(hf, "logit_scale", None, None)
    heads = hf.get("n_heads", 16)
    if heads & (heads - 1):
        raise ConversionError(
            f"config.json: n_heads={heads} is not supported (MPT's ALiBi slopes for a head count "
            "that is not a power of two differ from BLOOM's, which jaxlm computes)"
        )
    embed_dim = hf.get("d_model", 2048)
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 50368),
        max_len=hf.get("max_seq_len", 2048),
        num_layers=hf.get("n_layers", 24),
        embed_dim=embed_dim,
        num_heads=heads,
        mlp_dim=4 * embed_dim,
        activation="gelu_exact",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        norm_bias=False,
        position_embedding="alibi",
        tie_embeddings=True,
        use_bias=False,
        clip_qkv=attention["clip_qkv"],
        attention_scale=attention["softmax_scale"],
        dropout_rate=hf.get("resid_pdrop", 0.0),
        attention_dropout_rate=attention["attn_pdrop"],
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS, FREE) + head_mismatches(cfg)
    if cfg.num_heads & (cfg.num_heads - 1):
        problems.append(f"model.num_heads={cfg.num_heads} (not a power of two)")
    if cfg.mlp_dim != 4 * cfg.embed_dim:
        problems.append(f"model.mlp_dim={cfg.mlp_dim} (MPT's is 4 x embed_dim)")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.embed_dim,
        "n_heads": cfg.num_heads,
        "n_layers": cfg.num_layers,
        "expansion_ratio": 4,
        "max_seq_len": cfg.max_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout_rate,
        "initializer_range": cfg.init_std,
        "no_bias": True,
        "tie_word_embeddings": True,
        "attn_config": {
            **ATTENTION_DEFAULTS,
            "clip_qkv": cfg.clip_qkv,
            "softmax_scale": cfg.attention_scale,
            "attn_pdrop": cfg.attention_dropout_rate or 0,  # an int where 0 (transformers checks)
        },
    }


BLOCK, STACK = "transformer.blocks.{i}.", "decoder/layers/"


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    layers, attention = cfg.num_layers, f"{STACK}self_attention/"
    heads = (cfg.num_heads, cfg.resolved_head_dim)
    return [
        tensor(
            "transformer.wte.weight",
            "token_embed/embedding",
            pad_vocab(cfg.vocab_size, cfg.padded_vocab_size),
        ),
        *norm(f"{BLOCK}norm_1", f"{STACK}self_attention_norm", bias=False, layers=layers),
        *norm(f"{BLOCK}norm_2", f"{STACK}mlp_norm", bias=False, layers=layers),
        fused_linear(
            f"{BLOCK}attn.Wqkv",
            [(f"{attention}{name}", heads) for name in ("query", "key", "value")],
            (cfg.embed_dim,),
            layers=layers,
        ),
        *block_projections(
            {
                "out": f"{BLOCK}attn.out_proj",
                "wi": f"{BLOCK}ffn.up_proj",
                "wo": f"{BLOCK}ffn.down_proj",
            },
            STACK,
            cfg,
            bias=False,
            layers=layers,
        ),
        *norm("transformer.norm_f", "decoder/final_norm", bias=False),
    ]
