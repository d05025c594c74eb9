"""Qwen3 (`Qwen3ForCausalLM`) <-> jaxlm's GPT as Llama's (see `llama.py`), with each head's
queries and keys RMS-normalized before the rotary embedding (`model.qk_norm`).

Layers with sliding-window attention import with `model.max_len` cut to the window, as Qwen2's
(see `qwen2.py`).
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama, qwen2
from jaxlm.interop.hf_config import mismatches, require

MODEL_TYPE = "qwen3"
ARCHITECTURES = ("Qwen3ForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {**llama.NEEDS, "use_bias": False, "qk_norm": True}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "attention_bias", False, False)  # the released models have none
    cfg = llama.config_from_hf(hf, names)
    return dataclasses.replace(
        cfg, qk_norm=True, max_len=qwen2.window_length(hf, qwen2.sliding_window(hf))
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS)


def config_to_hf(cfg: ModelConfig) -> dict:
    return qwen2.qwen_config_to_hf(cfg, MODEL_TYPE, ARCHITECTURES, ("mlp_bias",))


rules = llama.rules
