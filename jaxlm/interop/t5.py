"""T5 (`T5ForConditionalGeneration`: T5, T5 v1.1, Flan-T5) <-> jaxlm's pre-RMSNorm
encoder-decoder without biases, with a relative position bias per stack.

Two T5 conventions are folded into the weights, so that the model runs as jaxlm runs any
encoder-decoder: T5 does not divide attention scores by sqrt(d_kv), so the query kernels are
multiplied by it; T5 with an output head tied to the embedding scales the decoder's output by
d_model^-1/2, so the decoder's final norm is. Both are exact when d_kv and d_model are powers of
4 (T5's d_kv is 64), and within a rounding otherwise. Flan-T5 and T5 v1.1 (`lm_head.weight` in
the checkpoint) keep their own output head. Dropout carries over.
"""

from __future__ import annotations

import math
import re

from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from jaxlm.errors import ConversionError
from jaxlm.interop.hf_config import TO_HF_ACTIVATION, activation_from_hf, mismatches
from jaxlm.interop.mapping import (
    IDENTITY,
    TRANSPOSE,
    Rule,
    chain,
    linear,
    norm,
    output_head,
    pad_vocab,
    reshape,
    scale,
    tensor,
)

MODEL_TYPE = "t5"
ARCHITECTURES = ("T5ForConditionalGeneration",)
# The tied copies of the shared embedding, and a cross-attention bias T5 never reads.
IGNORED = re.compile(
    r"^(encoder|decoder)\.embed_tokens\.weight$"
    r"|^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"
)
NEEDS = {
    "family": "seq2seq",
    "position_embedding": "relative",
    "norm": "rmsnorm",
    "norm_position": "pre",
    "use_bias": False,
    "qkv_bias": False,
    "qk_norm": False,
    "output_bias": False,
    "scale_embeddings": False,
}


def _feed_forward(name: str) -> tuple[bool, str]:
    """(gated, jaxlm activation) of a `feed_forward_proj` such as relu or gated-gelu."""
    gated, _, activation = name.rpartition("-")
    if gated not in ("", "gated"):
        raise ConversionError(f"config.json: feed_forward_proj={name!r} is not supported")
    if name == "gated-gelu":  # T5 v1.1's name for the tanh approximation
        activation = "gelu_new"
    return gated == "gated", activation_from_hf(activation)


def _scales_outputs(hf: dict) -> bool:
    """Whether T5 multiplies the decoder's output by d_model^-1/2: `scale_decoder_outputs`
    where written, else a head tied to the embedding (`tie_word_embeddings`, default true)."""
    return hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    gated, activation = _feed_forward(hf.get("feed_forward_proj", "relu"))
    layers = hf.get("num_layers", 6)
    return ModelConfig(
        family="seq2seq",
        vocab_size=hf.get("vocab_size", 32128),
        max_len=hf.get("n_positions", 512),
        num_layers=layers,
        num_decoder_layers=hf.get("num_decoder_layers") or layers,
        embed_dim=hf.get("d_model", 512),
        num_heads=hf.get("num_heads", 8),
        head_dim=hf.get("d_kv", 64),
        mlp_dim=hf.get("d_ff", 2048),
        activation=activation,
        mlp_type="gated" if gated else "plain",
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        norm_position="pre",
        position_embedding="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        tie_embeddings="lm_head.weight" not in names,
        use_bias=False,
        dropout_rate=hf.get("dropout_rate", 0.1),
    )


def _feed_forward_proj(cfg: ModelConfig) -> str | None:
    """T5's name of the model's MLP, or None where T5 has none (gated exact GELU)."""
    if cfg.mlp_type == "plain":
        return TO_HF_ACTIVATION[cfg.activation]
    if cfg.activation == "gelu_exact":  # "gated-gelu" means the tanh approximation
        return None
    return "gated-gelu" if cfg.activation == "gelu" else f"gated-{TO_HF_ACTIVATION[cfg.activation]}"


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS)
    if cfg.num_kv_heads not in (None, cfg.num_heads):
        problems.append(f"model.num_kv_heads={cfg.num_kv_heads}")
    if _feed_forward_proj(cfg) is None:
        problems.append(f"model.activation={cfg.activation!r} with model.mlp_type='gated'")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    """The config, with the special token ids of jaxlm's sentencepiece tokenizers: decoding
    starts from BOS, as `jaxlm.translate` does. A tied head's output is scaled, as T5's is."""
    return {
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "d_model": cfg.embed_dim,
        "d_kv": cfg.resolved_head_dim,
        "d_ff": cfg.mlp_dim,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "feed_forward_proj": _feed_forward_proj(cfg),
        "layer_norm_epsilon": cfg.norm_eps,
        "dropout_rate": cfg.dropout_rate,
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.tie_embeddings,
        "is_encoder_decoder": True,
        "pad_token_id": PAD_ID,
        "decoder_start_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _attention(hf: str, path: str, cfg: ModelConfig, layers: int) -> list[Rule]:
    """q/k/v/o of one T5 attention <-> jaxlm's query/key/value/out; the queries take T5's
    missing 1/sqrt(d_kv)."""
    d, heads = cfg.embed_dim, (cfg.num_heads, cfg.resolved_head_dim)
    inner = math.prod(heads)
    query = chain(TRANSPOSE, reshape((d, inner), (d, *heads)), scale(math.sqrt(heads[1])))
    return [
        tensor(f"{hf}.q.weight", f"{path}/query/kernel", query, layers),
        *linear(f"{hf}.k", f"{path}/key", (d,), heads, bias=False, layers=layers),
        *linear(f"{hf}.v", f"{path}/value", (d,), heads, bias=False, layers=layers),
        *linear(f"{hf}.o", f"{path}/out", heads, (d,), bias=False, layers=layers),
    ]


def _mlp(hf: str, path: str, cfg: ModelConfig, layers: int) -> list[Rule]:
    d, mlp = (cfg.embed_dim,), (cfg.mlp_dim,)
    inputs = [("wi_0", "wi_gate"), ("wi_1", "wi")] if cfg.mlp_type == "gated" else [("wi", "wi")]
    rules = [
        rule
        for hf_name, name in inputs
        for rule in linear(f"{hf}.{hf_name}", f"{path}/{name}", d, mlp, bias=False, layers=layers)
    ]
    return rules + linear(f"{hf}.wo", f"{path}/wo", mlp, d, bias=False, layers=layers)


def _stack(hf: str, stack: str, cfg: ModelConfig, layers: int, decoder: bool) -> list[Rule]:
    block = f"{hf}.block.{{i}}.layer"
    rules = _attention(f"{block}.0.SelfAttention", f"{stack}/layers/self_attention", cfg, layers)
    rules += norm(
        f"{block}.0.layer_norm", f"{stack}/layers/self_attention_norm", bias=False, layers=layers
    )
    mlp_layer = 1
    if decoder:
        rules += _attention(
            f"{block}.1.EncDecAttention", f"{stack}/layers/cross_attention", cfg, layers
        )
        rules += norm(
            f"{block}.1.layer_norm",
            f"{stack}/layers/cross_attention_norm",
            bias=False,
            layers=layers,
        )
        mlp_layer = 2
    rules += _mlp(f"{block}.{mlp_layer}.DenseReluDense", f"{stack}/layers/mlp", cfg, layers)
    rules += norm(
        f"{block}.{mlp_layer}.layer_norm", f"{stack}/layers/mlp_norm", bias=False, layers=layers
    )
    bias = f"{hf}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    return [*rules, tensor(bias, f"{stack}_position_bias/embedding")]


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    """The mapping. The decoder's final norm takes T5's output scale where the imported
    `config.json` has one (`hf`), and where an export writes one (a tied head)."""
    vocab = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size)
    scaled = _scales_outputs(hf) if hf is not None else cfg.tie_embeddings
    output_scale = scale(cfg.embed_dim**-0.5) if scaled else IDENTITY
    result = [
        tensor("shared.weight", "token_embed/embedding", vocab),
        *_stack("encoder", "encoder", cfg, cfg.num_layers, decoder=False),
        tensor("encoder.final_layer_norm.weight", "encoder/final_norm/scale"),
        *_stack("decoder", "decoder", cfg, cfg.decoder_layers, decoder=True),
        tensor("decoder.final_layer_norm.weight", "decoder/final_norm/scale", output_scale),
    ]
    if not cfg.tie_embeddings:
        result.append(output_head(cfg))
    return result
