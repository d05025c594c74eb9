"""OLMo 3 (`Olmo3ForCausalLM`) <-> jaxlm's GPT as OLMo 2's (see `olmo2.py`), with three
sliding-window layers to each full-attention one (`model.sliding_window`,
`model.global_attention_every`: 4, from `layer_types`) and the sliding layers rotating
unscaled (`model.rope_local_base`) where the full-attention layers' rotary positions are scaled
(YaRN, in the long-context models).

`config.json` gives the rotary settings as `rope_parameters` per layer type, or (older configs)
as one `rope_theta` for every layer with `rope_scaling` for the full-attention layers.
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.interop import gemma2, olmo2, rope
from jaxlm.interop.hf_config import mismatches
from jaxlm.interop.mapping import Rule

MODEL_TYPE = "olmo3"
ARCHITECTURES = ("Olmo3ForCausalLM",)
IGNORED = olmo2.IGNORED
NEEDS = {key: value for key, value in olmo2.NEEDS.items() if key != "sliding_window"}
FREE = ("global_attention_every", "rope_local_base")
PERIOD = 4  # transformers' default layer_types: every 4th layer full-attention
THETA = 500_000.0  # transformers' default rotary base


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    cfg = olmo2.config_from_hf(hf, names)
    window, every = gemma2.layer_pattern({"sliding_window": 4096, **hf}, cfg.num_layers, PERIOD)
    if window and window >= cfg.max_len:  # a window over every position
        window, every = None, 0
    cfg = dataclasses.replace(cfg, sliding_window=window, global_attention_every=every)
    theta = float(hf.get("rope_theta", THETA))
    return rope.with_layer_type_rope(cfg, *rope.layer_type_rope(hf, theta, theta))


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS, FREE) + rope.local_rope_mismatches(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = olmo2.config_to_hf(cfg, MODEL_TYPE, ARCHITECTURES)
    del hf["rope_theta"]  # given per layer type
    return {
        **hf,
        "sliding_window": cfg.sliding_window,
        "layer_types": [gemma2.LAYER_TYPES[full] for full in cfg.full_attention_layers],
        "rope_parameters": rope.layer_types_to_hf(cfg),
    }


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return olmo2.rules(cfg, names, hf)
