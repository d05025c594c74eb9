"""BERT (`BertModel` and the MLM, next-sentence and sequence-classification heads) <-> jaxlm's
post-LN `Bert`.

jaxlm's heads follow the tensors found: `cls.predictions.*` -> mlm, `cls.seq_relationship.*`
-> nsp, `classifier.*` -> classifier. A checkpoint without a pooler (`BertForMaskedLM`) gets a
zero pooler. Exports pick the HF class that holds exactly the model's heads.
"""

from __future__ import annotations

import re

from jaxlm.config import ModelConfig
from jaxlm.interop.hf_config import (
    activation_from_hf,
    head_mismatches,
    mismatches,
    require,
    shape_to_hf,
)
from jaxlm.interop.mapping import Rule, block_projections, linear, norm, pad_vocab, tensor

MODEL_TYPE = "bert"
# HF class -> the jaxlm heads it holds.
CLASSES = {
    "BertModel": (),
    "BertForMaskedLM": ("mlm",),
    "BertForPreTraining": ("mlm", "nsp"),
    "BertForNextSentencePrediction": ("nsp",),
    "BertForSequenceClassification": ("classifier",),
}
ARCHITECTURES = tuple(CLASSES)
# The position-id buffer; the MLM decoder, tied to the word embeddings and the MLM bias.
IGNORED = re.compile(r"(^|\.)embeddings\.position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")
HEAD_TENSORS = {
    "mlm": "cls.predictions.bias",
    "nsp": "cls.seq_relationship.weight",
    "classifier": "classifier.weight",
}
NEEDS = {
    "family": "bert",
    "position_embedding": "learned",
    "norm": "layernorm",
    "norm_position": "post",
    "mlp_type": "plain",
    "use_bias": True,
    "qk_norm": False,
    "scale_embeddings": False,
}


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    require(hf, "position_embedding_type", "absolute", "absolute")
    require(hf, "is_decoder", False, False)
    require(hf, "add_cross_attention", False, False)
    architecture = (hf.get("architectures") or ["BertModel"])[0]
    heads = [
        head
        for head in ("mlm", "nsp", "classifier")
        if head in CLASSES[architecture] or HEAD_TENSORS[head] in names
    ]
    if "mlm" in heads:
        require(hf, "tie_word_embeddings", True, True)
    return ModelConfig(
        family="bert",
        vocab_size=hf.get("vocab_size", 30522),
        max_len=hf.get("max_position_embeddings", 512),
        num_layers=hf.get("num_hidden_layers", 12),
        embed_dim=hf.get("hidden_size", 768),
        num_heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072),
        activation=activation_from_hf(hf.get("hidden_act", "gelu")),
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_position="post",
        position_embedding="learned",
        type_vocab_size=hf.get("type_vocab_size", 2),
        heads=heads,
        num_classes=len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2),
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
        init_std=hf.get("initializer_range", 0.02),
    )


def _hf_class(cfg: ModelConfig) -> str | None:
    heads = tuple(h for h in ("mlm", "nsp", "classifier") if h in cfg.heads)
    return next((name for name, held in CLASSES.items() if held == heads), None)


def incompatibilities(cfg: ModelConfig) -> list[str]:
    problems = mismatches(cfg, NEEDS) + head_mismatches(cfg)
    if cfg.family == "bert" and _hf_class(cfg) is None:
        problems.append(f"model.heads={cfg.heads} (no single Hugging Face class holds them)")
    return problems


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = {
        **shape_to_hf(cfg, MODEL_TYPE, _hf_class(cfg)),
        "layer_norm_eps": cfg.norm_eps,
        "type_vocab_size": cfg.type_vocab_size,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": cfg.dropout_rate,
        "attention_probs_dropout_prob": cfg.attention_dropout_rate,
        "tie_word_embeddings": True,
    }
    if "classifier" in cfg.heads:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_classes)}
    return hf


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    """The mapping; the encoder's names carry the `bert.` prefix of the head classes when a
    checkpoint's do (`names`) or, on export, when the model has heads."""
    if names is None:
        prefix = "bert." if cfg.heads else ""
    else:
        prefix = "bert." if any(name.startswith("bert.") for name in names) else ""
    d, heads, head_dim, layers = cfg.embed_dim, cfg.num_heads, cfg.resolved_head_dim, cfg.num_layers
    embeddings, block, stack = (
        f"{prefix}embeddings.",
        f"{prefix}encoder.layer.{{i}}.",
        "encoder/layers/",
    )
    attention = f"{stack}self_attention/"
    vocab = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size)
    result = [
        tensor(f"{embeddings}word_embeddings.weight", "token_embed/embedding", vocab),
        tensor(f"{embeddings}position_embeddings.weight", "position_embed/embedding"),
        tensor(f"{embeddings}token_type_embeddings.weight", "type_embed"),
        *norm(f"{embeddings}LayerNorm", "embed_norm"),
        *(
            rule
            for name in ("query", "key", "value")
            for rule in linear(
                f"{block}attention.self.{name}",
                f"{attention}{name}",
                (d,),
                (heads, head_dim),
                bias=True,
                layers=layers,
            )
        ),
        *block_projections(
            {
                "out": f"{block}attention.output.dense",
                "wi": f"{block}intermediate.dense",
                "wo": f"{block}output.dense",
            },
            stack,
            cfg,
            layers=layers,
        ),
        *norm(f"{block}attention.output.LayerNorm", f"{stack}self_attention_norm", layers=layers),
        *norm(f"{block}output.LayerNorm", f"{stack}mlp_norm", layers=layers),
        *linear(f"{prefix}pooler.dense", "pooler", (d,), (d,), bias=True, optional=True),
    ]
    if "mlm" in cfg.heads:
        result += [
            *linear("cls.predictions.transform.dense", "mlm_transform", (d,), (d,), bias=True),
            *norm("cls.predictions.transform.LayerNorm", "mlm_norm"),
            tensor("cls.predictions.bias", "mlm_bias", vocab),
        ]
    if "nsp" in cfg.heads:
        result += linear("cls.seq_relationship", "nsp_head", (d,), (2,), bias=True)
    if "classifier" in cfg.heads:
        result += linear("classifier", "classifier", (d,), (cfg.num_classes,), bias=True)
    return result
