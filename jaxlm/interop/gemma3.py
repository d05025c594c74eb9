"""Gemma 3 text models (`Gemma3ForCausalLM`, model type `gemma3_text`: Gemma 3 1B, or the
language model alone) <-> jaxlm's GPT as Gemma 2's (see `gemma2.py`), with each head's queries
and keys RMS-normalized (`model.qk_norm`, scaling by 1 + weight as every Gemma norm), no caps by
default, five sliding-window layers to each full-attention one, and the sliding layers' own
unscaled rotary base (`model.rope_local_base`).

`config.json` gives the two rotary settings as `rope_parameters` per layer type, or (older
configs) as `rope_theta` with `rope_scaling` for the full-attention layers and
`rope_local_base_freq` for the others.
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import gemma2, llama, rope
from jaxlm.interop.mapping import Rule

MODEL_TYPE = "gemma3_text"
ARCHITECTURES = ("Gemma3ForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {**gemma2.NEEDS, "qk_norm": True}
FREE = (*gemma2.FREE, "rope_local_base")
DEFAULTS = {
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
}
# transformers' Gemma3TextConfig defaults, which the text_config of multimodal checkpoints leaves
# out
TEXT_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "sliding_window": 4096,
}
PERIOD = 6  # transformers' default sliding_window_pattern


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    hf = {**TEXT_DEFAULTS, **hf}
    period = hf.get("sliding_window_pattern", PERIOD)
    cfg = gemma2.sandwich_config(hf, names, DEFAULTS, period)
    local_base = float(hf.get("rope_local_base_freq", 10_000.0))
    full, local_base = rope.layer_type_rope(hf, 1_000_000.0, local_base)
    return rope.with_layer_type_rope(dataclasses.replace(cfg, qk_norm=True), full, local_base)


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return gemma2.incompatibilities(cfg, NEEDS, FREE) + rope.local_rope_mismatches(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = {key: value for key, value in gemma2.config_to_hf(cfg).items() if key != "rope_theta"}
    return {
        **hf,
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "rope_parameters": rope.layer_types_to_hf(cfg),
        "use_bidirectional_attention": False,
    }


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return gemma2.rules(cfg, names, hf)
