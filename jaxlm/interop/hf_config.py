"""Checks and tables shared by the per-architecture mappings of Hugging Face `config.json`."""

from __future__ import annotations

from typing import Any

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError

# HF `hidden_act` / `activation_function` -> jaxlm `model.activation`, and back.
FROM_HF_ACTIVATION = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
TO_HF_ACTIVATION = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}


def activation_from_hf(name: str) -> str:
    if name not in FROM_HF_ACTIVATION:
        supported = ", ".join(FROM_HF_ACTIVATION)
        raise ConversionError(f"config.json: activation {name!r} is not supported ({supported})")
    return FROM_HF_ACTIVATION[name]


def require(hf: dict, key: str, default: Any, supported: Any) -> None:
    """The HF config value of `key` (or its HF default) must be `supported`."""
    value = hf.get(key, default)
    if value != supported:
        raise ConversionError(
            f"config.json: {key}={value!r} is not supported (jaxlm converts {key}={supported!r})"
        )


# Settings that only the architectures naming them in their NEEDS have (Gemma's), at the values
# every other architecture needs.
RARE_SETTINGS = {
    "norm_unit_offset": False,
    "global_attention_every": 0,
    "attention_scale": None,
    "attention_softcap": None,
    "logit_softcap": None,
    "rope_local_base": None,
}


def mismatches(cfg: ModelConfig, needs: dict[str, Any], free: tuple[str, ...] = ()) -> list[str]:
    """'model.key=value' for every key of `cfg` whose value differs from what `needs` says (and
    `RARE_SETTINGS`, where `needs` is silent and the key is not `free`)."""
    rare = {key: value for key, value in RARE_SETTINGS.items() if key not in free}
    return [
        f"model.{key}={getattr(cfg, key)!r}"
        for key, value in {**rare, **needs}.items()
        if getattr(cfg, key) != value
    ]


def head_mismatches(cfg: ModelConfig) -> list[str]:
    """Grouped-query attention or a head size other than embed_dim / num_heads."""
    problems = []
    if cfg.num_kv_heads not in (None, cfg.num_heads):
        problems.append(f"model.num_kv_heads={cfg.num_kv_heads}")
    if cfg.resolved_head_dim * cfg.num_heads != cfg.embed_dim:
        problems.append(f"model.head_dim={cfg.head_dim}")
    return problems
