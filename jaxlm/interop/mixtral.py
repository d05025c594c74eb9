"""Mixtral (`MixtralForCausalLM`) <-> jaxlm's GPT as Mistral's (see `mistral.py`), each block's
MLP a mixture of experts (`model.num_experts`, `jaxlm.layers.moe`): a router
(`block_sparse_moe.gate`) picks `num_experts_per_tok` of `num_local_experts` gated MLPs
(`experts.{j}.w1`, `w3`, `w2`: gate, up, down) and weighs their outputs by its probabilities
renormalized over them.

The router's jitter noise and auxiliary-loss settings only concern training in transformers;
jaxlm trains with `train.router_aux_loss` and `train.router_z_loss`.
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import llama, mistral
from jaxlm.interop.hf_config import mismatches
from jaxlm.interop.mapping import TRANSPOSE, Rule, stacked, tensor

MODEL_TYPE = "mixtral"
ARCHITECTURES = ("MixtralForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {
    **{key: value for key, value in llama.NEEDS.items() if key != "sliding_window"},
    "use_bias": False,
    "router_renormalize": True,
}
MOE = f"{llama.BLOCK}block_sparse_moe."


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    return dataclasses.replace(
        mistral.config_from_hf(hf, names),
        num_experts=hf.get("num_local_experts", 8),
        experts_per_token=hf.get("num_experts_per_tok", 2),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS, free=("num_experts",))
    return problems + ([] if cfg.num_experts else ["model.num_experts=0"])


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **mistral.config_to_hf(cfg),
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
    }


def experts(cfg: ModelConfig) -> list[Rule]:
    """The queries, keys and values, and the router and experts of each block's MLP."""
    layers = cfg.num_layers
    result = llama.query_key_value(cfg, bias=False)
    result.append(tensor(f"{MOE}gate.weight", f"{llama.MLP}router/kernel", TRANSPOSE, layers))
    for hf_name, name in (("w1", "wi_gate"), ("w3", "wi"), ("w2", "wo")):
        per_expert = [f"{MOE}experts.{j}.{hf_name}.weight" for j in range(cfg.num_experts)]
        result.append(stacked(per_expert, f"{llama.MLP}{name}", TRANSPOSE, layers=layers))
    return result


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return llama.rules(cfg, names, hf, projections=experts)
