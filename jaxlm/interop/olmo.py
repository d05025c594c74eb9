"""OLMo 1 (`OlmoForCausalLM`: OLMo-1B, OLMo-7B, OLMo-7B-0424) <-> jaxlm's GPT as Llama's (see
`llama.py`) with LayerNorms that learn no scale or bias (`model.norm_scale: false`; their epsilon
1e-5) and, in the later models, queries, keys and values clipped (`model.clip_qkv`).
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama
from jaxlm.interop.hf_config import mismatches, require

MODEL_TYPE = "olmo"
ARCHITECTURES = ("OlmoForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {
    **llama.NEEDS,
    "norm": "layernorm",
    "norm_eps": 1e-5,
    "norm_scale": False,
    "use_bias": False,
}
FREE = ("clip_qkv",)


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "attention_bias", False, False)  # the released models have none
    cfg = llama.config_from_hf(hf, names)
    return dataclasses.replace(
        cfg, norm="layernorm", norm_eps=1e-5, norm_scale=False, clip_qkv=hf.get("clip_qkv")
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS, FREE)


def config_to_hf(cfg: ModelConfig) -> dict:
    unset = ("rms_norm_eps", "mlp_bias")  # a fixed epsilon; no MLP biases
    hf = {key: value for key, value in llama.config_to_hf(cfg).items() if key not in unset}
    return {
        **hf,
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "clip_qkv": cfg.clip_qkv,
    }


rules = llama.rules
