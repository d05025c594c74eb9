"""Phi-3 and Phi-4 (`Phi3ForCausalLM`) -> jaxlm's GPT as Mistral's (see `mistral.py`): Llama's
layout with a sliding attention window where it is shorter than the positions, the query, key and
value projections in one tensor (`qkv_proj`) and the gate and up projections in another
(`gate_up_proj`).

Import only: jaxlm's model of Phi-3 is Mistral's (or Llama's without a window), and exports as
that class, which computes the same.
"""

from __future__ import annotations

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError
from jaxlm.interop import llama, mistral
from jaxlm.interop.mapping import Rule, fused_linear

MODEL_TYPE = "phi3"
ARCHITECTURES = ("Phi3ForCausalLM",)
IGNORED = llama.IGNORED


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ConversionError(
            f"config.json: partial_rotary_factor={partial} is not supported (jaxlm rotates "
            "every feature of a head)"
        )
    return mistral.config_from_hf(hf, names)


def fused_projections(cfg: ModelConfig) -> list[Rule]:
    """`qkv_proj` (queries, keys, values) and `gate_up_proj` (gate, then up)."""
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
    ]


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return llama.rules(cfg, names, hf, projections=fused_projections)
