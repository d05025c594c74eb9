"""Checks and tables shared by the per-architecture mappings of Hugging Face `config.json`."""

from __future__ import annotations

from typing import Any

from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import BOS_ID, EOS_ID
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


# Settings that only the architectures naming them in their NEEDS have (Gemma's, GPT-NeoX's,
# Phi's, OLMo's, BLOOM's, MPT's, Mixtral's), at the values every other architecture needs.
RARE_SETTINGS = {
    "block_layout": "sequential",
    "rotary_dim": None,
    "attention_bias": None,
    "norm_unit_offset": False,
    "global_attention_every": 0,
    "attention_scale": None,
    "attention_softcap": None,
    "logit_softcap": None,
    "rope_local_base": None,
    "qk_norm_scope": "head",
    "embed_norm": False,
    "norm_scale": True,
    "norm_bias": True,
    "clip_qkv": None,
    "num_experts": 0,
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


def head_mismatches(cfg: ModelConfig, grouped_query: bool = False) -> list[str]:
    """A head size other than embed_dim / num_heads, or grouped-query attention where the
    architecture lacks it (not `grouped_query`)."""
    problems = []
    if not grouped_query and cfg.num_kv_heads not in (None, cfg.num_heads):
        problems.append(f"model.num_kv_heads={cfg.num_kv_heads}")
    if cfg.resolved_head_dim * cfg.num_heads != cfg.embed_dim:
        problems.append(f"model.head_dim={cfg.head_dim}")
    return problems


def shape_to_hf(cfg: ModelConfig, model_type: str, architecture: str) -> dict:
    """The class and sizes of a model in `config.json`, with the key names of transformers'
    current configs (BERT's and the decoders')."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_len,
        "num_hidden_layers": cfg.num_layers,
        "hidden_size": cfg.embed_dim,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": TO_HF_ACTIVATION[cfg.activation],
        "initializer_range": cfg.init_std,
    }


def decoder_to_hf(cfg: ModelConfig, model_type: str, architecture: str) -> dict:
    """`shape_to_hf`, and the other `config.json` keys such decoders share."""
    return {
        **shape_to_hf(cfg, model_type, architecture),
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": cfg.attention_dropout_rate,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
