"""Gemma 2 (`Gemma2ForCausalLM`) <-> jaxlm's GPT as Gemma's (see `gemma.py`), with:

- each sublayer between two norms (`model.norm_position: sandwich`; HF's
  `post_attention_layernorm` is attention's second norm, `pre_feedforward_layernorm` the MLP's
  first);
- scores scaled by query_pre_attn_scalar^-0.5 (`model.attention_scale`, unset where that is
  head_dim^-0.5);
- attention scores and output logits capped by tanh (`model.attention_softcap`,
  `model.logit_softcap`);
- sliding-window layers with every Nth layer attending to all tokens (`model.sliding_window`,
  `model.global_attention_every`; Gemma 2's `layer_types` alternate, N = 2).
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError
from jaxlm.interop import gemma, llama
from jaxlm.interop.hf_config import mismatches
from jaxlm.interop.mapping import Rule

MODEL_TYPE = "gemma2"
ARCHITECTURES = ("Gemma2ForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {
    **{key: value for key, value in gemma.NEEDS.items() if key != "sliding_window"},
    "norm_position": "sandwich",
}
FREE = ("global_attention_every", "attention_scale", "attention_softcap", "logit_softcap")
BLOCK_NORMS = {
    "input_layernorm": "self_attention_norm",
    "post_attention_layernorm": "self_attention_post_norm",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "mlp_post_norm",
}
LAYER_TYPES = ("sliding_attention", "full_attention")
# transformers' defaults (Gemma 2 2B's) for keys a config.json may lack
DEFAULTS = {
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
}


def layer_pattern(hf: dict, layers: int, period: int = 2) -> tuple[int | None, int]:
    """(sliding_window, global_attention_every) of `layer_types` (by default every `period`th
    layer full-attention, the others sliding): sliding layers with every Nth a full-attention
    one; no window where none is sliding."""
    types = hf.get("layer_types") or [LAYER_TYPES[(i + 1) % period == 0] for i in range(layers)]
    if len(types) != layers or not set(types) <= set(LAYER_TYPES):
        raise ConversionError(
            f"config.json: layer_types must name {layers} layers, each one of "
            f"{', '.join(LAYER_TYPES)}"
        )
    window = hf.get("sliding_window", DEFAULTS["sliding_window"])
    sliding = [kind == "sliding_attention" for kind in types]
    if not any(sliding) or not window:
        return None, 0
    if all(sliding):
        return window, 0
    every = sliding.index(False) + 1
    if sliding != [(i + 1) % every != 0 for i in range(layers)]:
        raise ConversionError(
            "config.json: layer_types is not supported (jaxlm's layers are sliding ones with "
            "every Nth a full_attention one)"
        )
    return window, every


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    cfg = sandwich_config(hf, names, DEFAULTS)
    if cfg.sliding_window and cfg.sliding_window >= cfg.max_len:  # a window over every position
        cfg = dataclasses.replace(cfg, sliding_window=None, global_attention_every=0)
    return cfg


def sandwich_config(hf: dict, names: set[str], defaults: dict, period: int = 2) -> ModelConfig:
    """Gemma's config with Gemma 2's sandwich norms, score factor, caps (`defaults` for the
    keys `config.json` lacks) and layer pattern (`layer_pattern`)."""
    cfg = gemma.config_from_hf(hf, names)
    window, every = layer_pattern(hf, cfg.num_layers, period)
    scalar = hf.get("query_pre_attn_scalar", defaults["query_pre_attn_scalar"])
    return dataclasses.replace(
        cfg,
        norm_position="sandwich",
        sliding_window=window,
        global_attention_every=every,
        attention_scale=None if scalar == cfg.resolved_head_dim else scalar**-0.5,
        attention_softcap=hf.get("attn_logit_softcapping", defaults["attn_logit_softcapping"]),
        logit_softcap=hf.get("final_logit_softcapping", defaults["final_logit_softcapping"]),
    )


def _query_pre_attn_scalar(cfg: ModelConfig) -> int | None:
    """The integer whose inverse square root is the model's score factor; None if there is no
    such integer."""
    if cfg.attention_scale is None:
        return cfg.resolved_head_dim
    scalar = round(cfg.attention_scale**-2)
    return scalar if scalar > 0 and scalar**-0.5 == cfg.attention_scale else None


def incompatibilities(
    cfg: ModelConfig, needs: dict = NEEDS, free: tuple[str, ...] = FREE
) -> list[str]:
    problems = mismatches(cfg, needs, free)
    if _query_pre_attn_scalar(cfg) is None:
        problems.append(f"model.attention_scale={cfg.attention_scale!r} (not 1 / sqrt(integer))")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **gemma.config_to_hf(cfg),
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _query_pre_attn_scalar(cfg),
        "sliding_window": cfg.sliding_window,
        "layer_types": [LAYER_TYPES[full] for full in cfg.full_attention_layers],
        "attn_logit_softcapping": cfg.attention_softcap,
        "final_logit_softcapping": cfg.logit_softcap,
    }


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    return llama.rules(cfg, names, hf, block_norms=BLOCK_NORMS)
