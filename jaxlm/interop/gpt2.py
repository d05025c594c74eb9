"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) <-> jaxlm's GPT with learned positions, pre-LN.

GPT-2's `Conv1D` weights are stored [in, out] (no transpose); its attention projects queries,
keys and values with one `c_attn` of width 3 * embed, split here into jaxlm's three kernels.
"""

from __future__ import annotations

import re

import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import BOS_ID, EOS_ID
from jaxlm.interop.hf_config import (
    TO_HF_ACTIVATION,
    activation_from_hf,
    head_mismatches,
    mismatches,
    require,
)
from jaxlm.interop.mapping import (
    Rule,
    norm,
    output_head,
    pad_vocab,
    reshape,
    tensor,
)

MODEL_TYPE = "gpt2"
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
# The causal-mask buffers of older checkpoints; the output head when tied to the embeddings.
IGNORED = re.compile(r"(^|\.)attn\.(masked_)?bias$|^lm_head\.weight$")
NEEDS = {
    "family": "gpt",
    "position_embedding": "learned",
    "norm": "layernorm",
    "norm_position": "pre",
    "mlp_type": "plain",
    "use_bias": True,
    "qk_norm": False,
    "sliding_window": None,
    "scale_embeddings": False,
    "output_bias": False,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "scale_attn_weights", True, True)
    require(hf, "scale_attn_by_inverse_layer_idx", False, False)
    require(hf, "add_cross_attention", False, False)
    embed_dim = hf.get("n_embd", 768)
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 50257),
        max_len=hf.get("n_positions", 1024),
        num_layers=hf.get("n_layer", 12),
        embed_dim=embed_dim,
        num_heads=hf.get("n_head", 12),
        mlp_dim=hf.get("n_inner") or 4 * embed_dim,
        activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        norm_position="pre",
        position_embedding="learned",
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout_rate=hf.get("resid_pdrop", 0.1),
        attention_dropout_rate=hf.get("attn_pdrop", 0.1),
        init_std=hf.get("initializer_range", 0.02),
        scaled_residual_init=True,
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS) + head_mismatches(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_layer": cfg.num_layers,
        "n_embd": cfg.embed_dim,
        "n_head": cfg.num_heads,
        "n_inner": cfg.mlp_dim,
        "activation_function": TO_HF_ACTIVATION[cfg.activation],
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "resid_pdrop": cfg.dropout_rate,
        "embd_pdrop": cfg.dropout_rate,
        "attn_pdrop": cfg.attention_dropout_rate,
        "initializer_range": cfg.init_std,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _split_qkv(shape: tuple[int, ...]):
    """c_attn's [..., 3 * heads * head_dim] <-> query, key, value [..., heads, head_dim]."""

    def to_jaxlm(a):
        return tuple(part.reshape(shape) for part in np.split(a, 3, axis=-1))

    def to_hf(*parts):
        return (np.concatenate([p.reshape(*shape[:-2], -1) for p in parts], axis=-1),)

    return to_jaxlm, to_hf


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    """The mapping; `names` (a checkpoint's) tell whether they carry the `transformer.` prefix
    of `GPT2LMHeadModel` (always written)."""
    prefix = "transformer."
    if names is not None and not any(name.startswith(prefix) for name in names):
        prefix = ""
    d, heads, head_dim, layers = cfg.embed_dim, cfg.num_heads, cfg.resolved_head_dim, cfg.num_layers
    vocab = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size)
    block, stack = f"{prefix}h.{{i}}.", "decoder/layers/"
    qkv = tuple(f"{stack}self_attention/{n}/" for n in ("query", "key", "value"))
    result = [
        tensor(f"{prefix}wte.weight", "token_embed/embedding", vocab),
        tensor(f"{prefix}wpe.weight", "position_embed/embedding"),
        *norm(f"{block}ln_1", f"{stack}self_attention_norm", layers=layers),
        Rule(
            (f"{block}attn.c_attn.weight",),
            tuple(p + "kernel" for p in qkv),
            *_split_qkv((d, heads, head_dim)),
            layers=layers,
        ),
        Rule(
            (f"{block}attn.c_attn.bias",),
            tuple(p + "bias" for p in qkv),
            *_split_qkv((heads, head_dim)),
            layers=layers,
        ),
        tensor(
            f"{block}attn.c_proj.weight",
            f"{stack}self_attention/out/kernel",
            reshape((heads * head_dim, d), (heads, head_dim, d)),
            layers,
        ),
        tensor(f"{block}attn.c_proj.bias", f"{stack}self_attention/out/bias", layers=layers),
        *norm(f"{block}ln_2", f"{stack}mlp_norm", layers=layers),
        tensor(f"{block}mlp.c_fc.weight", f"{stack}mlp/wi/kernel", layers=layers),
        tensor(f"{block}mlp.c_fc.bias", f"{stack}mlp/wi/bias", layers=layers),
        tensor(f"{block}mlp.c_proj.weight", f"{stack}mlp/wo/kernel", layers=layers),
        tensor(f"{block}mlp.c_proj.bias", f"{stack}mlp/wo/bias", layers=layers),
        *norm(f"{prefix}ln_f", "decoder/final_norm"),
    ]
    if not cfg.tie_embeddings:
        result.append(output_head(cfg))
    return result
