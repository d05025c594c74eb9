"""Gemma (`GemmaForCausalLM`) <-> jaxlm's GPT as Llama's (see `llama.py`, whose tensor names it
shares), with token embeddings multiplied by sqrt(hidden_size) (`model.scale_embeddings`), norms
that scale by 1 + weight (`model.norm_unit_offset`) and a tanh-approximated GELU gate.

Gemma's configs name that GELU `gelu` or `gelu_pytorch_tanh` and transformers reads both as the
tanh approximation; so does jaxlm.
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError
from jaxlm.interop import llama
from jaxlm.interop.hf_config import mismatches, require

MODEL_TYPE = "gemma"
ARCHITECTURES = ("GemmaForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {
    **llama.NEEDS,
    "scale_embeddings": True,
    "norm_unit_offset": True,
    "activation": "gelu",
    "use_bias": False,
}
GELU_NAMES = ("gelu", "gelu_pytorch_tanh", "gelu_new")


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "attention_bias", False, False)  # the released models have none
    if hf.get("use_bidirectional_attention"):
        raise ConversionError(
            "config.json: use_bidirectional_attention=True is not supported (jaxlm's decoders "
            "are causal)"
        )
    activation = hf.get("hidden_activation") or hf.get("hidden_act", "gelu_pytorch_tanh")
    if activation not in GELU_NAMES:
        raise ConversionError(
            f"config.json: activation {activation!r} is not supported (Gemma's GELU: "
            f"{', '.join(GELU_NAMES)})"
        )
    hf = {"tie_word_embeddings": True, **hf, "hidden_act": "gelu_pytorch_tanh"}
    cfg = llama.config_from_hf(hf, names)
    return dataclasses.replace(cfg, scale_embeddings=True, norm_unit_offset=True)


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS)


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = {key: value for key, value in llama.config_to_hf(cfg).items() if key != "mlp_bias"}
    return {
        **hf,
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "hidden_act": "gelu_pytorch_tanh",
    }


rules = llama.rules
