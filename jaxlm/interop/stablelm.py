"""StableLM (`StableLmForCausalLM`: StableLM-3B-4E1T, StableLM 2, StableLM Zephyr) <-> jaxlm's
GPT in Llama's layout (see `llama.py`, whose tensor names it shares) with LayerNorms, rotary
positions on a share of each head (`model.rotary_dim`), biases on the query, key and value
projections or none, sequential blocks or parallel ones reading one norm
(`use_parallel_residual`: `model.block_layout: parallel_shared_norm`, no
`post_attention_layernorm`), and (StableLM 2 12B's `qk_layernorm`) LayerNorms of each head's
queries and keys, a scale each (`model.qk_norm_scope: each_head`).
"""

from __future__ import annotations

from jaxlm.config import ModelConfig
from jaxlm.interop import llama, rope
from jaxlm.interop.hf_config import (
    activation_from_hf,
    decoder_to_hf,
    head_mismatches,
    mismatches,
)
from jaxlm.interop.mapping import Rule, stacked

MODEL_TYPE = "stablelm"
ARCHITECTURES = ("StableLmForCausalLM",)
IGNORED = llama.IGNORED
# Llama's, with LayerNorms; query/key/value biases either way (use_qkv_bias)
NEEDS = {key: value for key, value in llama.NEEDS.items() if key not in ("qkv_bias", "qk_norm")}
NEEDS |= {"norm": "layernorm", "use_bias": False}
LAYOUTS = {False: "sequential", True: "parallel_shared_norm"}  # use_parallel_residual ->


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    embed_dim, heads = hf.get("hidden_size", 2560), hf.get("num_attention_heads", 32)
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = embed_dim // heads
    qk_norms = bool(hf.get("qk_layernorm", False))
    return ModelConfig(
        family="gpt",
        vocab_size=hf.get("vocab_size", 50304),
        max_len=hf.get("max_position_embeddings", 4096),
        num_layers=hf.get("num_hidden_layers", 32),
        embed_dim=embed_dim,
        num_heads=heads,
        num_kv_heads=None if kv_heads == heads else kv_heads,
        mlp_dim=hf.get("intermediate_size", 6912),
        mlp_type="gated",
        activation=activation_from_hf(hf.get("hidden_act", "silu")),
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        block_layout=LAYOUTS[bool(hf.get("use_parallel_residual", False))],
        position_embedding="rotary",
        rotary_dim=rope.rotary_dim_from_hf(hf, head_dim, "partial_rotary_factor", 0.25),
        **rope.rope_from_hf(hf),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        use_bias=False,
        qkv_bias=bool(hf.get("use_qkv_bias", False)),
        qk_norm=qk_norms,
        qk_norm_scope="each_head" if qk_norms else "head",
        dropout_rate=hf.get("hidden_dropout", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    free = ("block_layout", "rotary_dim", "qk_norm_scope")
    problems = mismatches(cfg, NEEDS, free=free) + head_mismatches(cfg, grouped_query=True)
    if cfg.block_layout == "parallel":
        problems.append("model.block_layout='parallel'")
    if cfg.qk_norm and cfg.qk_norm_scope != "each_head":
        problems.append(f"model.qk_norm_scope={cfg.qk_norm_scope!r}")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        **decoder_to_hf(cfg, MODEL_TYPE, ARCHITECTURES[0]),
        "num_key_value_heads": cfg.num_kv_heads or cfg.num_heads,
        "layer_norm_eps": cfg.norm_eps,
        "use_parallel_residual": cfg.block_layout == "parallel_shared_norm",
        "rope_parameters": rope.rope_to_hf(cfg),
        "partial_rotary_factor": rope.rotary_share(cfg),  # the keys of transformers before 5
        "rope_theta": cfg.rope_base,
        "use_qkv_bias": cfg.qkv_bias,
        "qk_layernorm": cfg.qk_norm,
        "hidden_dropout": cfg.dropout_rate,
    }


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    norms = dict(llama.BLOCK_NORMS)
    if cfg.block_layout != "sequential":
        del norms["post_attention_layernorm"]
    result = llama.rules(cfg, names, hf, block_norms=norms)
    if cfg.qk_norm:  # a LayerNorm per head: `norms.{head}`
        kv_heads = cfg.num_kv_heads or cfg.num_heads
        for hf_name, name, heads in (("q", "query", cfg.num_heads), ("k", "key", kv_heads)):
            per_head = [
                f"{llama.BLOCK}self_attn.{hf_name}_layernorm.norms.{h}.weight" for h in range(heads)
            ]
            result.append(
                stacked(per_head, f"{llama.ATTENTION}{name}_norm/scale", layers=cfg.num_layers)
            )
    return result
