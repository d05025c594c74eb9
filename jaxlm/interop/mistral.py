"""Mistral (`MistralForCausalLM`) -> jaxlm's GPT: Llama's architecture (see `llama.py`), whose
sliding attention window, when shorter than max_position_embeddings, becomes `model.max_len`
(full attention over at most the window is the same). Such models export as Llama."""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama

MODEL_TYPE = "mistral"
ARCHITECTURES = ("MistralForCausalLM",)
IGNORED = llama.IGNORED


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    cfg = llama.config_from_hf(hf, names)
    return dataclasses.replace(cfg, max_len=llama.window_length(hf, hf.get("sliding_window")))


rules = llama.rules
