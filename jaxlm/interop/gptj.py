"""GPT-J (`GPTJForCausalLM`) <-> jaxlm's GPT with parallel blocks reading one LayerNorm
(`model.block_layout: parallel_shared_norm`), rotary positions on the first `rotary_dim`
features of each head, no biases on the attention's projections (`model.attention_bias: false`)
but on the MLP's and the logits.

GPT-J rotates pairs of neighbouring features (2i, 2i + 1) where jaxlm's `apply_rotary` rotates
(i, i + rotary_dim / 2), by the same frequency i. The conversion permutes each head's query and
key features accordingly; queries and keys move together, so their products, and the model,
are unchanged.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.interop import gpt2, phi
from jaxlm.interop.hf_config import head_mismatches, mismatches
from jaxlm.interop.mapping import (
    TRANSPOSE,
    Rule,
    Transform,
    chain,
    linear,
    norm,
    output_head,
    pad_vocab,
    reshape,
    tensor,
)

MODEL_TYPE = "gptj"
ARCHITECTURES = ("GPTJForCausalLM",)
# Buffers of older checkpoints (causal masks); the output head when tied.
IGNORED = re.compile(r"\.attn\.(bias|masked_bias)$|^lm_head\.weight$")
NEEDS = {  # Phi's, with GPT-J's own rotary base and no attention biases
    **phi.NEEDS,
    "rope_base": 10_000.0,
    "rope_scaling": "none",
    "attention_bias": False,
}


# transformers' GPTJConfig defaults (GPT-J 6B) where they differ from GPT-2's
DEFAULTS = {
    "vocab_size": 50400,
    "n_positions": 2048,
    "n_embd": 4096,
    "n_layer": 28,
    "n_head": 16,
    "rotary_dim": 64,
    "tie_word_embeddings": False,
    "resid_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    hf = {**DEFAULTS, **hf}
    cfg = gpt2.config_from_hf(hf, names)  # the keys GPT-J names as GPT-2 does
    rotary_dim = hf["rotary_dim"]
    return dataclasses.replace(
        cfg,
        block_layout="parallel_shared_norm",
        position_embedding="rotary",
        rotary_dim=None if rotary_dim in (None, cfg.resolved_head_dim) else rotary_dim,
        output_bias=True,
        attention_bias=False,
        scaled_residual_init=False,
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    free = ("block_layout", "rotary_dim", "attention_bias")
    return mismatches(cfg, NEEDS, free=free) + head_mismatches(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **gpt2.config_to_hf(cfg),
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "rotary_dim": cfg.resolved_rotary_dim,
    }


def rotate_half_order(head_dim: int, rotary_dim: int) -> np.ndarray:
    """For each jaxlm feature of a head, the GPT-J feature it is: the even rotary features, the
    odd ones, then those that do not rotate."""
    return np.concatenate(
        [np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2), np.arange(rotary_dim, head_dim)]
    )


def _reordered(order: np.ndarray) -> Transform:
    """An array's last axis reordered by `order`, and back."""
    inverse = np.argsort(order)
    return Transform(lambda a: a[..., order], lambda a: a[..., inverse])


BLOCK, STACK = "transformer.h.{i}.", "decoder/layers/"


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    d, heads, head_dim, layers = cfg.embed_dim, cfg.num_heads, cfg.resolved_head_dim, cfg.num_layers
    attention, mlp = f"{STACK}self_attention/", f"{STACK}mlp/"
    vocab = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size)
    order = rotate_half_order(head_dim, cfg.resolved_rotary_dim)
    rotated = chain(TRANSPOSE, reshape((d, d), (d, heads, head_dim)), _reordered(order))
    result = [
        tensor("transformer.wte.weight", "token_embed/embedding", vocab),
        *norm(f"{BLOCK}ln_1", f"{STACK}self_attention_norm", layers=layers),
        tensor(f"{BLOCK}attn.q_proj.weight", f"{attention}query/kernel", rotated, layers),
        tensor(f"{BLOCK}attn.k_proj.weight", f"{attention}key/kernel", rotated, layers),
        *linear(
            f"{BLOCK}attn.v_proj",
            f"{attention}value",
            (d,),
            (heads, head_dim),
            bias=False,
            layers=layers,
        ),
        *linear(
            f"{BLOCK}attn.out_proj",
            f"{attention}out",
            (heads, head_dim),
            (d,),
            bias=False,
            layers=layers,
        ),
        *linear(f"{BLOCK}mlp.fc_in", f"{mlp}wi", (d,), (cfg.mlp_dim,), bias=True, layers=layers),
        *linear(f"{BLOCK}mlp.fc_out", f"{mlp}wo", (cfg.mlp_dim,), (d,), bias=True, layers=layers),
        *norm("transformer.ln_f", "decoder/final_norm"),
        tensor("lm_head.bias", "output_bias/bias", vocab),
    ]
    if not cfg.tie_embeddings:
        result.append(output_head(cfg))
    return result
