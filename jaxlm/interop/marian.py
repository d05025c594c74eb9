"""Marian (`MarianMTModel`: the OPUS-MT translation models) <-> jaxlm's post-LN encoder-decoder
with sinusoidal positions laid out as halves and a bias on the logits.

One embedding table serves source, target and output (`share_encoder_decoder_embeddings`), and
both stacks have the same heads and MLP width. Dropout settings carry over; Marian's activation
dropout and layer drop, which only act in training, do not.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from jaxlm.errors import ConversionError
from jaxlm.interop.hf_config import (
    TO_HF_ACTIVATION,
    activation_from_hf,
    head_mismatches,
    mismatches,
    require,
)
from jaxlm.interop.mapping import Rule, chain, linear, norm, pad_vocab, reshape, tensor

MODEL_TYPE = "marian"
ARCHITECTURES = ("MarianMTModel",)
# The sinusoidal tables (recomputed on load) and the tied copies of the shared embedding.
IGNORED = re.compile(
    r"^model\.(encoder|decoder)\.embed_positions\.weight$"
    r"|^model\.(encoder|decoder)\.embed_tokens\.weight$|^lm_head\.weight$"
)
NEEDS = {
    "family": "seq2seq",
    "position_embedding": "sinusoidal",
    "sinusoidal_layout": "halves",
    "norm": "layernorm",
    "norm_eps": 1e-5,
    "norm_position": "post",
    "mlp_type": "plain",
    "use_bias": True,
    "qk_norm": False,
    "tie_embeddings": True,
    "output_bias": True,
}


def _same_in_both_stacks(hf: dict, encoder_key: str, decoder_key: str, default: int) -> int:
    encoder, decoder = hf.get(encoder_key, default), hf.get(decoder_key, default)
    if encoder != decoder:
        raise ConversionError(
            f"config.json: {encoder_key}={encoder} and {decoder_key}={decoder} differ (jaxlm's "
            "encoder and decoder share them)"
        )
    return encoder


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "share_encoder_decoder_embeddings", True, True)
    require(hf, "tie_word_embeddings", True, True)
    vocab = hf.get("vocab_size", 58101)
    require(hf, "decoder_vocab_size", vocab, vocab)
    return ModelConfig(
        family="seq2seq",
        vocab_size=vocab,
        max_len=hf.get("max_position_embeddings", 1024),
        num_layers=hf.get("encoder_layers", 12),
        num_decoder_layers=hf.get("decoder_layers", 12),
        embed_dim=hf.get("d_model", 1024),
        num_heads=_same_in_both_stacks(
            hf, "encoder_attention_heads", "decoder_attention_heads", 16
        ),
        mlp_dim=_same_in_both_stacks(hf, "encoder_ffn_dim", "decoder_ffn_dim", 4096),
        activation=activation_from_hf(hf.get("activation_function", "gelu")),
        norm="layernorm",
        norm_eps=1e-5,
        norm_position="post",
        position_embedding="sinusoidal",
        sinusoidal_layout="halves",
        scale_embeddings=hf.get("scale_embedding", False),
        tie_embeddings=True,
        output_bias=True,
        dropout_rate=hf.get("dropout", 0.1),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        init_std=hf.get("init_std", 0.02),
        # Marian's attention dropout needs the attention that applies it.
        attention_backend="reference" if hf.get("attention_dropout", 0.0) else "auto",
    )


def incompatibilities(cfg: ModelConfig) -> list[str]:
    return mismatches(cfg, NEEDS) + head_mismatches(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    """The config, with the special token ids of jaxlm's sentencepiece tokenizers: decoding
    starts from BOS, as `jaxlm.translate` does."""
    return {
        "architectures": list(ARCHITECTURES),
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "decoder_vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_len,
        "encoder_layers": cfg.num_layers,
        "decoder_layers": cfg.decoder_layers,
        "d_model": cfg.embed_dim,
        "encoder_attention_heads": cfg.num_heads,
        "decoder_attention_heads": cfg.num_heads,
        "encoder_ffn_dim": cfg.mlp_dim,
        "decoder_ffn_dim": cfg.mlp_dim,
        "activation_function": TO_HF_ACTIVATION[cfg.activation],
        "scale_embedding": cfg.scale_embeddings,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "dropout": cfg.dropout_rate,
        "attention_dropout": cfg.attention_dropout_rate,
        "init_std": cfg.init_std,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "decoder_start_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "forced_eos_token_id": EOS_ID,
    }


def _attention(hf: str, path: str, cfg: ModelConfig, layers: int) -> list[Rule]:
    """q/k/v/out_proj of one Marian attention <-> jaxlm's query/key/value/out."""
    d, heads = cfg.embed_dim, (cfg.num_heads, cfg.resolved_head_dim)
    rules = []
    for hf_name, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        rules += linear(f"{hf}.{hf_name}", f"{path}/{name}", (d,), heads, bias=True, layers=layers)
    return rules + linear(f"{hf}.out_proj", f"{path}/out", heads, (d,), bias=True, layers=layers)


def _layer(hf: str, stack: str, cfg: ModelConfig, layers: int, cross: bool) -> list[Rule]:
    d, mlp = cfg.embed_dim, cfg.mlp_dim
    rules = _attention(f"{hf}.self_attn", f"{stack}self_attention", cfg, layers)
    rules += norm(f"{hf}.self_attn_layer_norm", f"{stack}self_attention_norm", layers=layers)
    if cross:
        rules += _attention(f"{hf}.encoder_attn", f"{stack}cross_attention", cfg, layers)
        rules += norm(
            f"{hf}.encoder_attn_layer_norm", f"{stack}cross_attention_norm", layers=layers
        )
    rules += linear(f"{hf}.fc1", f"{stack}mlp/wi", (d,), (mlp,), bias=True, layers=layers)
    rules += linear(f"{hf}.fc2", f"{stack}mlp/wo", (mlp,), (d,), bias=True, layers=layers)
    return rules + norm(f"{hf}.final_layer_norm", f"{stack}mlp_norm", layers=layers)


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    """The mapping; `final_logits_bias` may be absent (a zero bias)."""
    vocab = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size)
    logit_bias = chain(reshape((1, cfg.vocab_size), (cfg.vocab_size,)), vocab)
    return [
        tensor("model.shared.weight", "token_embed/embedding", vocab),
        tensor("final_logits_bias", "output_bias/bias", logit_bias, optional=True),
        *_layer("model.encoder.layers.{i}", "encoder/layers/", cfg, cfg.num_layers, False),
        *_layer("model.decoder.layers.{i}", "decoder/layers/", cfg, cfg.decoder_layers, True),
    ]
