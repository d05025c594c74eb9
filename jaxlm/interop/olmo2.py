"""OLMo 2 (`Olmo2ForCausalLM`) <-> jaxlm's GPT as Llama's (see `llama.py`), with:

- no norm before attention or the MLP, one on each of their outputs before the residual sum
  (`model.norm_position: output`; HF's `post_attention_layernorm` and
  `post_feedforward_layernorm`);
- queries and keys RMS-normalized over all heads' features together, before the rotary
  embedding (`model.qk_norm_scope: heads`; HF's `q_norm` and `k_norm`, one scale per feature of
  every head).
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama
from jaxlm.interop.hf_config import mismatches, require
from jaxlm.interop.mapping import Rule

MODEL_TYPE = "olmo2"
ARCHITECTURES = ("Olmo2ForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {
    **llama.NEEDS,
    "norm_position": "output",
    "qk_norm": True,
    "qk_norm_scope": "heads",
    "use_bias": False,
}
BLOCK_NORMS = {
    "post_attention_layernorm": "self_attention_post_norm",
    "post_feedforward_layernorm": "mlp_post_norm",
}
DEFAULTS = {"rms_norm_eps": 1e-5}  # transformers' default, where config.json lacks it


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "attention_bias", False, False)  # the released models have none
    cfg = llama.config_from_hf({**DEFAULTS, **hf}, names)
    return dataclasses.replace(cfg, norm_position="output", qk_norm=True, qk_norm_scope="heads")


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS)


def config_to_hf(
    cfg: ModelConfig, model_type: str = MODEL_TYPE, architectures: tuple[str, ...] = ARCHITECTURES
) -> dict:
    hf = {key: value for key, value in llama.config_to_hf(cfg).items() if key != "mlp_bias"}
    return {**hf, "architectures": list(architectures), "model_type": model_type}


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return llama.rules(cfg, names, hf, block_norms=BLOCK_NORMS)
