"""Mistral (`MistralForCausalLM`) <-> jaxlm's GPT as Llama's (see `llama.py`), with its sliding
attention window (`model.sliding_window`) when shorter than its positions. A model without
one exports as Llama."""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama
from jaxlm.interop.hf_config import mismatches

MODEL_TYPE = "mistral"
ARCHITECTURES = ("MistralForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {
    **{key: value for key, value in llama.NEEDS.items() if key != "sliding_window"},
    "use_bias": False,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    cfg = llama.config_from_hf(hf, names)
    window = hf.get("sliding_window")
    return dataclasses.replace(
        cfg, sliding_window=window if window and window < cfg.max_len else None
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS) + (
        ["model.sliding_window=None"] if not cfg.sliding_window else []
    )


def config_to_hf(cfg: ModelConfig) -> dict:
    dropped = ("attention_bias", "mlp_bias")  # Mistral has no biases
    hf = {key: value for key, value in llama.config_to_hf(cfg).items() if key not in dropped}
    return {
        **hf,
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "sliding_window": cfg.sliding_window,
    }


rules = llama.rules
