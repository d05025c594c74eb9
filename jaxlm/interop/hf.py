"""Hugging Face model directories <-> a jaxlm `ModelConfig` and parameter tree.

A directory holds `config.json` and either `model.safetensors` or the shards listed in
`model.safetensors.index.json`. Tensors are read with safetensors, never unpickled, and nothing is
downloaded. GPT-2, BERT, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3 (text), GPT-NeoX
(Pythia), GPT-J, Phi-1/1.5/2, Mixtral, StableLM, Falcon, BLOOM, MPT, OLMo 1 to 3, Marian and T5
convert both ways (see `gpt2.py`, `bert.py`, `llama.py`, `mistral.py`, `mixtral.py`, `qwen2.py`,
`qwen3.py`, `gemma.py`, `gemma2.py`, `gemma3.py`, `gpt_neox.py`, `gptj.py`, `phi.py`, `stablelm.py`,
`falcon.py`, `bloom.py`, `mpt.py`, `olmo.py`, `olmo2.py`, `olmo3.py`, `marian.py`, `t5.py`); Phi-3
and the language model of Gemma 3's multimodal checkpoints import (`phi3.py`,
`gemma3_multimodal.py`): each of those modules maps `config.json` to a `ModelConfig` (and back, but
the import-only ones) and gives the tensor `rules(cfg, names, hf)` (the checkpoint's tensor names
and `config.json` on import, neither on export)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxlm.config import Config, DataConfig, ModelConfig, validate
from jaxlm.errors import ConfigError, ConversionError
from jaxlm.interop import (
    bert,
    bloom,
    falcon,
    gemma,
    gemma2,
    gemma3,
    gemma3_multimodal,
    gpt2,
    gpt_neox,
    gptj,
    llama,
    marian,
    mistral,
    mixtral,
    mpt,
    olmo,
    olmo2,
    olmo3,
    phi,
    phi3,
    qwen2,
    qwen3,
    stablelm,
    t5,
)
from jaxlm.interop.mapping import short_list, to_hf, to_jaxlm
from jaxlm.models.summary import abstract_params

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
MAPPINGS = {
    module.MODEL_TYPE: module
    for module in (
        gpt2,
        bert,
        llama,
        mistral,
        mixtral,
        qwen2,
        qwen3,
        gemma,
        gemma2,
        gemma3,
        gemma3_multimodal,
        gpt_neox,
        gptj,
        phi,
        phi3,
        stablelm,
        falcon,
        bloom,
        mpt,
        olmo,
        olmo2,
        olmo3,
        marian,
        t5,
    )
}
# config.json's special token ids, and the token each names.
TOKEN_ID_KEYS = {
    "pad_token_id": "pad",
    "bos_token_id": "bos",
    "decoder_start_token_id": "bos",
    "eos_token_id": "eos",
    "forced_eos_token_id": "eos",
}
# Legacy (TensorFlow-era) LayerNorm parameter names, read under their current names.
LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


class _Tensors:
    """A checkpoint's tensors by name, read one at a time from one or several files."""

    def __init__(self, directory: Path):
        if (directory / WEIGHTS).is_file():
            files = [directory / WEIGHTS]
        elif (directory / INDEX).is_file():
            try:
                weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise ConversionError(f"{directory / INDEX}: no valid weight_map") from None
            files = [directory / name for name in sorted(set(weight_map.values()))]
        else:
            raise ConversionError(
                f"{directory}: no {WEIGHTS} or {INDEX} (other weight formats are not read; "
                "save the model with safe_serialization=True)"
            )
        self.where = {}
        for file in files:
            if not file.is_file():
                raise ConversionError(f"{file} not found ({INDEX} lists it)")
            try:
                handle = safe_open(file, framework="numpy")
            except (SafetensorError, OSError) as e:
                raise ConversionError(f"{file}: not a readable safetensors file ({e})") from None
            for name in handle.keys():
                self.where[_current_name(name)] = (handle, name)

    @property
    def names(self) -> set[str]:
        return set(self.where)

    def read(self, name: str) -> np.ndarray:
        handle, stored_name = self.where[name]
        return handle.get_tensor(stored_name)


def _current_name(name: str) -> str:
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def read_hf_config(directory: Path) -> dict:
    """The parsed `config.json` of a model directory."""
    path = directory / CONFIG
    if not path.is_file():
        raise ConversionError(f"{directory} is not a Hugging Face model directory (no {CONFIG})")
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ConversionError(f"{path}: not a JSON object")
    return hf


def _mapping_for(hf: dict):
    model_type = hf.get("model_type")
    if model_type not in MAPPINGS:
        supported = ", ".join(sorted(MAPPINGS))
        raise ConversionError(
            f"{CONFIG}: unsupported model_type {model_type!r} (supported: {supported})"
        )
    mapping = MAPPINGS[model_type]
    architecture = (hf.get("architectures") or [mapping.ARCHITECTURES[0]])[0]
    if architecture not in mapping.ARCHITECTURES:
        raise ConversionError(
            f"{CONFIG}: unsupported architecture {architecture!r} "
            f"(supported: {', '.join(mapping.ARCHITECTURES)})"
        )
    return mapping


def _parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """`{"decoder/layers/mlp/wi/kernel": shape, ...}` of the model `cfg` describes."""
    flat = flatten_dict(nn.unbox(abstract_params(cfg)), sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _validated(cfg: ModelConfig) -> ModelConfig:
    try:
        validate(Config(model=cfg, data=DataConfig(seq_len=min(DataConfig.seq_len, cfg.max_len))))
    except ConfigError as e:
        raise ConversionError(f"{CONFIG} describes no valid jaxlm model: {e}") from None
    return cfg


def from_pretrained(
    directory: str | Path, param_dtype: str = "float32"
) -> tuple[ModelConfig, dict]:
    """(model config, parameters as NumPy arrays in `param_dtype`) of a Hugging Face directory.

    The vocabulary rows that jaxlm adds up to `padded_vocab_size` are zeros. A tensor the model
    needs that is missing, or one that does not belong to it, raises `ConversionError`.
    """
    directory = Path(directory)
    hf = read_hf_config(directory)
    mapping = _mapping_for(hf)
    tensors = _Tensors(directory)
    names = tensors.names
    cfg = mapping.config_from_hf(hf, names)
    cfg = _validated(dataclasses.replace(cfg, param_dtype=param_dtype))
    rules = mapping.rules(cfg, names, hf)
    known = {name for rule in rules for name in rule.hf_names()}
    missing = {n for rule in rules if not rule.skipped(names) for n in rule.hf_names()} - names
    unexpected = {name for name in names - known if not mapping.IGNORED.search(name)}
    problems = [f"missing tensors {short_list(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected tensors {short_list(unexpected)}")
    if problems:
        raise ConversionError(f"{directory}: {'; '.join(problems)}")
    params = to_jaxlm(rules, tensors.read, names, _parameter_shapes(cfg), cfg.weight_dtype)
    return cfg, unflatten_dict(params, sep="/")


def _mapping_to_export(cfg: ModelConfig):
    """The first mapping, in `MAPPINGS` order, that exports the model (GPT-2 before Llama
    before the architectures that extend it)."""
    candidates = [
        mapping
        for mapping in MAPPINGS.values()
        if hasattr(mapping, "config_to_hf") and mapping.NEEDS["family"] == cfg.family
    ]
    for mapping in candidates:
        if not mapping.incompatibilities(cfg):
            return mapping
    reasons = "; ".join(
        f"{m.MODEL_TYPE} does not support {', '.join(m.incompatibilities(cfg))}" for m in candidates
    )
    raise ConversionError(f"no Hugging Face architecture fits this model: {reasons}")


def _with_token_ids(hf: dict, token_ids: dict[str, int | None]) -> dict:
    """`hf` with the special token ids it has replaced by those `token_ids` gives (None: the
    tokenizer has no such token)."""
    return {
        key: token_ids.get(TOKEN_ID_KEYS[key], value) if key in TOKEN_ID_KEYS else value
        for key, value in hf.items()
    }


def save_pretrained(
    directory: str | Path,
    model_cfg: ModelConfig,
    params: dict,
    token_ids: dict[str, int | None] | None = None,
) -> None:
    """Write `config.json` and `model.safetensors` that `transformers` loads (GPT2LMHeadModel,
    LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
    GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, GPTNeoXForCausalLM, GPTJForCausalLM,
    PhiForCausalLM, Phi3ForCausalLM, StableLmForCausalLM, FalconForCausalLM, BloomForCausalLM,
    MptForCausalLM, OlmoForCausalLM, Olmo2ForCausalLM, Olmo3ForCausalLM, MarianMTModel,
    T5ForConditionalGeneration, or the BERT class holding the model's heads). The special token ids
    the config names (decoders: bos, eos; encoder-decoders: pad, eos and the decoder start, bos) are
    those of jaxlm's sentencepiece tokenizers unless `token_ids` ({"pad": ..., "bos": ..., "eos":
    ...}, the model's tokenizer's; None for a token it lacks) says otherwise."""
    mapping = _mapping_to_export(model_cfg)
    flat = {path: np.asarray(v) for path, v in flatten_dict(nn.unbox(params), sep="/").items()}
    shapes = _parameter_shapes(model_cfg)
    problems = []
    if missing := set(shapes) - set(flat):
        problems.append(f"missing parameters {short_list(missing)}")
    if unexpected := set(flat) - set(shapes):
        problems.append(f"unexpected parameters {short_list(unexpected)}")
    if wrong := [p for p in shapes if p in flat and flat[p].shape != shapes[p]]:
        problems.append(f"parameters of the wrong shape {short_list(wrong)}")
    if problems:
        raise ConversionError(f"the parameters do not fit the config: {'; '.join(problems)}")
    tensors = to_hf(mapping.rules(model_cfg), flat)
    hf = _with_token_ids(mapping.config_to_hf(model_cfg), token_ids or {})
    hf["dtype"] = str(next(iter(tensors.values())).dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(hf, indent=2) + "\n")
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
