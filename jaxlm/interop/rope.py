"""Rotary position settings of Hugging Face `config.json` <-> jaxlm's `model.rope_*` and
`model.rotary_dim`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError

# HF -> rope_scaling
ROPE_TYPES = {
    "default": "none",
    "linear": "linear",
    "llama3": "llama3",
    "yarn": "yarn",
    "longrope": "longrope",
}
# Types read as others: dynamic NTK scaling changes the frequencies only beyond
# max_position_embeddings, which jaxlm's max_len never passes; "su" is LongRoPE's first name.
READ_AS = {"dynamic": "default", "su": "longrope"}


def layer_type_rope(hf: dict, theta: float, local_theta: float) -> tuple[dict, float]:
    """(the rotary fields of the full-attention layers, the rotary base of the sliding-window
    layers, which rotate unscaled) of a config.json with `rope_parameters` per layer type, or
    (older configs) with one `rope_theta` (else `theta`) and `rope_scaling` for the
    full-attention layers; `local_theta`: the sliding layers' base where config.json does not
    give it."""
    per_type = hf.get("rope_parameters") or {}
    if "full_attention" in per_type or "sliding_attention" in per_type:
        local = per_type.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise ConversionError(
                f"config.json: sliding_attention rope_type {local['rope_type']!r} is not "
                "supported (jaxlm's sliding layers rotate unscaled)"
            )
        full = rope_from_hf({"rope_parameters": per_type.get("full_attention") or {}})
        return full, float(local.get("rope_theta", local_theta))
    return rope_from_hf({"rope_theta": theta, **hf}), local_theta


def with_layer_type_rope(cfg: ModelConfig, full: dict, local_base: float) -> ModelConfig:
    """`cfg` rotating its full-attention layers by the rotary fields `full` and its sliding-window
    layers by `local_base`, unscaled (`model.rope_local_base`, where it has both kinds)."""
    cfg = dataclasses.replace(cfg, **full)
    if not cfg.sliding_window:  # every layer full
        return cfg
    if not cfg.global_attention_every:  # every layer sliding
        return dataclasses.replace(cfg, rope_base=local_base, rope_scaling="none")
    return dataclasses.replace(cfg, rope_local_base=local_base)


def local_rope_mismatches(cfg: ModelConfig) -> list[str]:
    """Sliding-window layers that a config.json with rotary settings per layer type cannot
    describe: scaled ones."""
    if cfg.sliding_window and cfg.rope_local_base is None and cfg.rope_scaling != "none":
        return [f"model.rope_scaling={cfg.rope_scaling!r} in sliding-window layers"]
    return []


def layer_types_to_hf(cfg: ModelConfig) -> dict:
    """`rope_parameters` per layer type: the full-attention layers' and the sliding ones'."""
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_base or cfg.rope_base}
    return {"full_attention": rope_to_hf(cfg), "sliding_attention": local}


def rope_from_hf(hf: dict) -> dict:
    """The rotary settings of `config.json` (`rope_parameters`, or the older `rope_scaling` with
    a top-level `rope_theta`) as ModelConfig fields; unscaled, linear, Llama 3.1, YaRN (its
    attention factor given, or from DeepSeek's `mscale` and `mscale_all_dim`, or left to the
    default) and LongRoPE scaling; dynamic NTK scaling reads as none (see `READ_AS`)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope_type = READ_AS.get(rope_type, rope_type)
    if rope_type not in ROPE_TYPES:
        supported = [*ROPE_TYPES, *READ_AS]
        raise ConversionError(
            f"config.json: rope_type {rope_type!r} is not supported ({', '.join(supported)})"
        )
    fields = {
        "rope_base": float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        "rope_scaling": ROPE_TYPES[rope_type],
    }
    try:
        if rope_type == "longrope":
            return fields | _longrope_from_hf(rope, hf)
        if rope_type != "default":
            fields["rope_scaling_factor"] = float(rope["factor"])
        if rope_type == "llama3":
            fields |= {
                "rope_low_freq_factor": float(rope["low_freq_factor"]),
                "rope_high_freq_factor": float(rope["high_freq_factor"]),
                "rope_original_max_len": int(rope["original_max_position_embeddings"]),
            }
        if rope_type == "yarn":
            fields |= _yarn_from_hf(rope)
    except KeyError as e:
        raise ConversionError(f"config.json: rope_type {rope_type!r} without {e}") from None
    return fields


def _yarn_from_hf(rope: dict) -> dict:
    if rope.get("truncate", True) is False:
        raise ConversionError("config.json: yarn with truncate=false is not supported")
    factor = float(rope["factor"])
    attention_factor = rope.get("attention_factor")
    if attention_factor is None and rope.get("mscale") and rope.get("mscale_all_dim"):
        scale = [0.1 * rope[key] * math.log(factor) + 1 for key in ("mscale", "mscale_all_dim")]
        attention_factor = scale[0] / scale[1] if factor > 1 else 1.0
    return {
        "rope_original_max_len": int(rope["original_max_position_embeddings"]),
        "rope_beta_fast": float(rope.get("beta_fast") or 32.0),
        "rope_beta_slow": float(rope.get("beta_slow") or 1.0),
        "rope_attention_factor": None if attention_factor is None else float(attention_factor),
    }


def _longrope_from_hf(rope: dict, hf: dict) -> dict:
    """LongRoPE's factors; its original length inside `rope_parameters` or beside it (Phi-3's
    `config.json`), its factor given or the ratio of the lengths, as transformers reads them."""
    original = int(
        rope.get("original_max_position_embeddings") or hf["original_max_position_embeddings"]
    )
    factor = rope.get("factor") or hf.get("max_position_embeddings", original) / original
    attention_factor = rope.get("attention_factor")
    return {
        "rope_scaling_factor": float(factor),
        "rope_original_max_len": original,
        "rope_short_factors": [float(f) for f in rope["short_factor"]],
        "rope_long_factors": [float(f) for f in rope["long_factor"]],
        "rope_attention_factor": None if attention_factor is None else float(attention_factor),
    }


def rope_to_hf(cfg: ModelConfig) -> dict:
    """`rope_parameters` of `config.json` for the rotary settings of `cfg`."""
    rope_type = {value: key for key, value in ROPE_TYPES.items()}[cfg.rope_scaling]
    rope = {"rope_type": rope_type, "rope_theta": cfg.rope_base}
    if cfg.rotary_dim is not None:
        rope["partial_rotary_factor"] = rotary_share(cfg)
    if cfg.rope_scaling != "none":
        rope["factor"] = cfg.rope_scaling_factor
    if cfg.rope_scaling == "llama3":
        rope |= {
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        }
    if cfg.rope_scaling == "yarn":
        rope |= {
            "original_max_position_embeddings": cfg.rope_original_max_len,
            "beta_fast": cfg.rope_beta_fast,
            "beta_slow": cfg.rope_beta_slow,
        }
    if cfg.rope_scaling == "longrope":
        rope |= {
            "original_max_position_embeddings": cfg.rope_original_max_len,
            "short_factor": list(cfg.rope_short_factors),
            "long_factor": list(cfg.rope_long_factors),
        }
    if cfg.rope_scaling in ("yarn", "longrope") and cfg.rope_attention_factor is not None:
        rope["attention_factor"] = cfg.rope_attention_factor
    return rope


def rotary_dim_from_hf(hf: dict, head_dim: int, legacy_key: str, default: float) -> int | None:
    """`model.rotary_dim` of the share of each head that rotates: `partial_rotary_factor` of
    `rope_parameters`, else the architecture's own top-level key (`legacy_key`), else `default`;
    truncated to a whole number of features, as transformers does. None: all of them."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    share = rope.get("partial_rotary_factor", hf.get(legacy_key, default))
    dim = int(head_dim * share)
    return None if dim == head_dim else dim


def rotary_share(cfg: ModelConfig) -> float:
    """The `partial_rotary_factor` that gives back `cfg`'s rotary_dim features when multiplied by
    the head size and truncated: rotary_dim / head_dim, or the next float up where the product
    falls short of rotary_dim by a rounding."""
    dim, head_dim = cfg.resolved_rotary_dim, cfg.resolved_head_dim
    share = dim / head_dim
    return share if int(head_dim * share) == dim else float(np.nextafter(share, 2.0))
