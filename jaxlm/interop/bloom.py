"""BLOOM (`BloomForCausalLM`: BLOOM, BLOOMZ) <-> jaxlm's GPT with ALiBi attention biases and no
position embedding (`model.position_embedding: alibi`), a LayerNorm of the embedded tokens
(`model.embed_norm`), pre-LN sequential blocks with biases, a tanh-GELU MLP and the output head
tied to the embeddings.

The query, key and value projections are one tensor whose output features run head by head, as
GPT-NeoX's (`mapping.grouped_qkv_linear`). BLOOM adds slope x key position to the scores, jaxlm
-slope x (query position - key position): per query the two differ by a constant, which the
softmax ignores.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.interop.hf_config import decoder_to_hf, head_mismatches, mismatches, require
from jaxlm.interop.mapping import (
    Rule,
    block_projections,
    grouped_qkv_linear,
    norm,
    pad_vocab,
    tensor,
)

MODEL_TYPE = "bloom"
ARCHITECTURES = ("BloomForCausalLM",)
IGNORED = re.compile(r"^lm_head\.weight$")  # tied to the embeddings
NEEDS = {
    "family": "gpt",
    "position_embedding": "alibi",
    "embed_norm": True,
    "norm": "layernorm",
    "norm_position": "pre",
    "mlp_type": "plain",
    "activation": "gelu",
    "scale_embeddings": False,
    "tie_embeddings": True,
    "output_bias": False,
    "use_bias": True,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}
DEFAULT_LENGTH = 2048  # BLOOM's training length; ALiBi sets no bound of its own
# config.json keys of other decoders that BLOOM lacks: no position table, an MLP of 4 x
# hidden_size, tanh GELU
UNSET = ("max_position_embeddings", "intermediate_size", "hidden_act")


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "apply_residual_connection_post_layernorm", False, False)
    require(hf, "tie_word_embeddings", True, True)
    embed_dim = hf.get("hidden_size", hf.get("n_embed", 64))
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 250_880),
        max_len=hf.get("seq_length", DEFAULT_LENGTH),
        num_layers=hf.get("n_layer", 2),
        embed_dim=embed_dim,
        num_heads=hf.get("n_head", 8),
        mlp_dim=4 * embed_dim,
        activation="gelu",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        position_embedding="alibi",
        embed_norm=True,
        tie_embeddings=True,
        use_bias=True,
        dropout_rate=hf.get("hidden_dropout", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS) + head_mismatches(cfg)
    if cfg.mlp_dim != 4 * cfg.embed_dim:
        problems.append(f"model.mlp_dim={cfg.mlp_dim} (BLOOM's is 4 x embed_dim)")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    renamed = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}
    hf = {
        renamed.get(key, key): value
        for key, value in decoder_to_hf(cfg, MODEL_TYPE, ARCHITECTURES[0]).items()
        if key not in UNSET
    }
    return {
        **hf,
        "seq_length": cfg.max_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "hidden_dropout": cfg.dropout_rate,
        "apply_residual_connection_post_layernorm": False,
    }


BLOCK, STACK = "transformer.h.{i}.", "decoder/layers/"


def block_linears(cfg: ModelConfig, kv_heads: int, bias: bool) -> list[Rule]:
    """A block's fused query/key/value projection (`kv_heads` groups), attention output and MLP,
    named as BLOOM names them (and Falcon, which took BLOOM's code)."""
    attention = f"{STACK}self_attention/"
    return [
        *grouped_qkv_linear(
            f"{BLOCK}self_attention.query_key_value",
            tuple(f"{attention}{name}" for name in ("query", "key", "value")),
            cfg.embed_dim,
            cfg.num_heads,
            kv_heads,
            cfg.resolved_head_dim,
            bias=bias,
            layers=cfg.num_layers,
        ),
        *block_projections(
            {
                "out": f"{BLOCK}self_attention.dense",
                "wi": f"{BLOCK}mlp.dense_h_to_4h",
                "wo": f"{BLOCK}mlp.dense_4h_to_h",
            },
            STACK,
            cfg,
            bias=bias,
            layers=cfg.num_layers,
        ),
    ]


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    block_norms = {"input_layernorm": "self_attention_norm", "post_attention_layernorm": "mlp_norm"}
    return [
        tensor(
            "transformer.word_embeddings.weight",
            "token_embed/embedding",
            pad_vocab(cfg.vocab_size, cfg.padded_vocab_size),
        ),
        *norm("transformer.word_embeddings_layernorm", "embed_norm"),
        *(
            rule
            for hf_norm, name in block_norms.items()
            for rule in norm(f"{BLOCK}{hf_norm}", f"{STACK}{name}", layers=cfg.num_layers)
        ),
        *block_linears(cfg, cfg.num_heads, bias=True),  # one query head a group
        *norm("transformer.ln_f", "decoder/final_norm"),
    ]
