"""Phi-3 and Phi-4 (`Phi3ForCausalLM`) -> jaxlm's GPT as Mistral's (see `mistral.py`): Llama's
layout with a sliding attention window where it is shorter than the positions, the query, key and
value projections in one tensor (`qkv_proj`) and the gate and up projections in another
(`gate_up_proj`).

Phi-4-mini rotates a share of each head (`partial_rotary_factor`, `model.rotary_dim`).

jaxlm's model of a Phi-3 that rotates whole heads is Mistral's (or Llama's without a window),
and exports as that class, which computes the same; models that rotate a share of each head
export as Phi-3, their projections fused again.
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama, mistral, rope
from jaxlm.interop.hf_config import mismatches
from jaxlm.interop.mapping import Rule, fused_linear

MODEL_TYPE = "phi3"
ARCHITECTURES = ("Phi3ForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = mistral.NEEDS
FREE = ("rotary_dim",)


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    cfg = mistral.config_from_hf(hf, names)
    rotary_dim = rope.rotary_dim_from_hf(hf, cfg.resolved_head_dim, "partial_rotary_factor", 1.0)
    return dataclasses.replace(cfg, rotary_dim=rotary_dim)


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS, FREE)
    if cfg.rotary_dim is None:  # Llama and Mistral export those
        problems.append("model.rotary_dim=None")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = {
        **mistral.config_to_hf(cfg),
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "partial_rotary_factor": rope.rotary_share(cfg),
        "pad_token_id": None,  # transformers' default, 32,000, is past smaller vocabularies
    }
    if cfg.rope_scaling == "longrope":
        hf["original_max_position_embeddings"] = cfg.rope_original_max_len
    return hf


def fused_projections(cfg: ModelConfig) -> list[Rule]:
    """`qkv_proj` (queries, keys, values), `gate_up_proj` (gate, then up) and `down_proj`."""
    d, head_dim, layers = cfg.embed_dim, cfg.resolved_head_dim, cfg.num_layers
    heads, kv_heads = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    qkv = [
        (f"{llama.ATTENTION}query", (heads, head_dim)),
        (f"{llama.ATTENTION}key", (kv_heads, head_dim)),
        (f"{llama.ATTENTION}value", (kv_heads, head_dim)),
    ]
    gate_up = [(f"{llama.MLP}wi_gate", (cfg.mlp_dim,)), (f"{llama.MLP}wi", (cfg.mlp_dim,))]
    return [
        fused_linear(f"{llama.BLOCK}self_attn.qkv_proj", qkv, (d,), layers=layers),
        fused_linear(f"{llama.BLOCK}mlp.gate_up_proj", gate_up, (d,), layers=layers),
        *llama.down_projection(cfg),
    ]


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return llama.rules(cfg, names, hf, projections=fused_projections)
