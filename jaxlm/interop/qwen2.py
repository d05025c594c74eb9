"""Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`) <-> jaxlm's GPT as Llama's (see `llama.py`), with
biases on the query, key and value projections alone (`model.qkv_bias`).

Qwen2 uses its sliding window from `max_window_layers` on, and jaxlm's window is the same in
every layer: a model with such layers imports with `model.max_len` cut to the window, where full
attention is the same (see `window_length`).
"""

from __future__ import annotations

import dataclasses
import warnings

from jaxlm.config import ModelConfig
from jaxlm.interop import llama
from jaxlm.interop.hf_config import mismatches

MODEL_TYPE = "qwen2"
ARCHITECTURES = ("Qwen2ForCausalLM",)
IGNORED = llama.IGNORED
NEEDS = {**llama.NEEDS, "use_bias": False, "qkv_bias": True}


def sliding_window(hf: dict) -> int | None:
    """The sliding window, where some layer uses one."""
    layer_types = hf.get("layer_types") or []
    sliding = "sliding_attention" in layer_types or (
        not layer_types and hf.get("use_sliding_window", False)
    )
    return hf.get("sliding_window") if sliding else None


def window_length(hf: dict, window: int | None) -> int:
    """The longest sequence jaxlm imports a model as: its max_position_embeddings, or a shorter
    sliding attention window (full causal attention over at most the window's length is the
    model's windowed attention exactly)."""
    length = hf.get("max_position_embeddings", 2048)
    if window and window < length:
        warnings.warn(
            f"config.json: sliding_window={window} is below max_position_embeddings={length}; "
            f"the model imports with model.max_len={window}, where full attention is the same",
            stacklevel=3,
        )
        return window
    return length


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    cfg = llama.config_from_hf(hf, names)  # Llama's, without biases
    return dataclasses.replace(cfg, qkv_bias=True, max_len=window_length(hf, sliding_window(hf)))


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS)


def qwen_config_to_hf(
    cfg: ModelConfig, model_type: str, architectures: tuple[str, ...], dropped: tuple[str, ...]
) -> dict:
    """Llama's `config.json` for `cfg` as a Qwen model's: without the Llama keys `dropped`, and
    without a sliding window."""
    hf = {key: value for key, value in llama.config_to_hf(cfg).items() if key not in dropped}
    return {
        **hf,
        "architectures": list(architectures),
        "model_type": model_type,
        "use_sliding_window": False,
        "sliding_window": None,
    }


def config_to_hf(cfg: ModelConfig) -> dict:
    return qwen_config_to_hf(cfg, MODEL_TYPE, ARCHITECTURES, ("attention_bias", "mlp_bias"))


rules = llama.rules
