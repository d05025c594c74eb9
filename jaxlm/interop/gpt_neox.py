"""GPT-NeoX and Pythia (`GPTNeoXForCausalLM`) <-> jaxlm's GPT with LayerNorm, rotary positions
on a share of each head (`model.rotary_dim`), a plain MLP and biases, its blocks parallel
(`use_parallel_residual`: attention and the MLP both read the block's input, each through its
own norm) or sequential.

The query, key and value projections are one tensor whose output features run head by head (each
head's query, key, value: `mapping.grouped_qkv_linear`); the rotary pairs are the rotate-half
ones of jaxlm's `apply_rotary`. The output head is `embed_out` in the released checkpoints and
`lm_head` in those transformers 5 saves; either is read, `embed_out` written.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.interop import rope
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
    grouped_qkv_linear,
    norm,
    output_head,
    pad_vocab,
    tensor,
)

MODEL_TYPE = "gpt_neox"
ARCHITECTURES = ("GPTNeoXForCausalLM",)
# Buffers of older checkpoints (causal masks, rotary frequencies); the output head when tied.
IGNORED = re.compile(
    r"\.attention\.(bias|masked_bias)$|\.rotary_emb\.inv_freq$|^(embed_out|lm_head)\.weight$"
)
NEEDS = {
    "family": "gpt",
    "position_embedding": "rotary",
    "norm": "layernorm",
    "norm_position": "pre",
    "mlp_type": "plain",
    "scale_embeddings": False,
    "output_bias": False,
    "use_bias": True,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}
LAYOUTS = {True: "parallel", False: "sequential"}  # use_parallel_residual -> block_layout


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "attention_bias", True, True)
    embed_dim, heads = hf.get("hidden_size", 6144), hf.get("num_attention_heads", 64)
    head_dim = embed_dim // heads
    rotary = rope.rope_from_hf({"rope_theta": hf.get("rotary_emb_base", 10_000.0), **hf})
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 50432),
        max_len=hf.get("max_position_embeddings", 2048),
        num_layers=hf.get("num_hidden_layers", 44),
        embed_dim=embed_dim,
        num_heads=heads,
        mlp_dim=hf.get("intermediate_size", 24576),
        activation=activation_from_hf(hf.get("hidden_act", "gelu")),
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        block_layout=LAYOUTS[bool(hf.get("use_parallel_residual", True))],
        position_embedding="rotary",
        rotary_dim=rope.rotary_dim_from_hf(hf, head_dim, "rotary_pct", 0.25),
        **rotary,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        use_bias=True,
        dropout_rate=hf.get("hidden_dropout", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS, free=("block_layout", "rotary_dim")) + head_mismatches(cfg)
    if cfg.block_layout == "parallel_shared_norm":
        problems.append("model.block_layout='parallel_shared_norm'")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **decoder_to_hf(cfg, MODEL_TYPE, ARCHITECTURES[0]),
        "layer_norm_eps": cfg.norm_eps,
        "use_parallel_residual": cfg.block_layout == "parallel",
        "rope_parameters": rope.rope_to_hf(cfg),
        "rotary_pct": rope.rotary_share(cfg),  # the keys of transformers before 5
        "rotary_emb_base": cfg.rope_base,
        "attention_bias": True,
        "hidden_dropout": cfg.dropout_rate,
    }


BLOCK, STACK = "gpt_neox.layers.{i}.", "decoder/layers/"


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    d, heads, layers = cfg.embed_dim, cfg.num_heads, cfg.num_layers
    attention = f"{STACK}self_attention/"
    block_norms = {"input_layernorm": "self_attention_norm", "post_attention_layernorm": "mlp_norm"}
    result = [
        tensor(
            "gpt_neox.embed_in.weight",
            "token_embed/embedding",
            pad_vocab(cfg.vocab_size, cfg.padded_vocab_size),
        ),
        *(
            rule
            for hf_norm, name in block_norms.items()
            for rule in norm(f"{BLOCK}{hf_norm}", f"{STACK}{name}", layers=layers)
        ),
        *grouped_qkv_linear(  # one query head a group: q, k, v of each head in turn
            f"{BLOCK}attention.query_key_value",
            tuple(f"{attention}{name}" for name in ("query", "key", "value")),
            d,
            heads,
            heads,
            cfg.resolved_head_dim,
            layers=layers,
        ),
        *block_projections(
            {
                "out": f"{BLOCK}attention.dense",
                "wi": f"{BLOCK}mlp.dense_h_to_4h",
                "wo": f"{BLOCK}mlp.dense_4h_to_h",
            },
            STACK,
            cfg,
            layers=layers,
        ),
        *norm("gpt_neox.final_layer_norm", "decoder/final_norm"),
    ]
    if not cfg.tie_embeddings:
        head = "lm_head.weight" if "lm_head.weight" in (names or ()) else "embed_out.weight"
        result.append(output_head(cfg, head))
    return result
