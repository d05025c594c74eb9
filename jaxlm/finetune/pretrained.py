"""`finetune.init_from`: weights to start from and the architecture they fix.

A Hugging Face model directory is imported with `jaxlm.interop`; a jaxlm workdir gives its latest
complete checkpoint, a checkpoint step directory (`<workdir>/checkpoints/<step>`) that one, with
any LoRA update of that run merged in (a soft prompt or prefix of that run is not carried over).
`package:<package>/<path>` names a directory inside an installed package. A run without a
tokenizer of its own takes the one the weights were trained with (`pretrained_tokenizer`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxlm.checkpoint import restore_numpy, step_directories
from jaxlm.config import ModelConfig, load_config
from jaxlm.data.hf_tokenizer import WORKDIR_SENTENCEPIECE, run_tokenizer, tokenizer_files
from jaxlm.errors import ConfigError
from jaxlm.finetune import lora
from jaxlm.finetune.patterns import SEP, flat, nested
from jaxlm.interop import from_pretrained
from jaxlm.interop.mapping import short_list
from jaxlm.resources import resolve_path

KEY = "finetune.init_from"
# What the run's config decides; every other model key comes from the pretrained checkpoint.
RUN_KEYS = (
    "heads",
    "num_classes",
    "dropout_rate",
    "attention_dropout_rate",
    "attention_backend",
    "dtype",
    "param_dtype",
    "remat_policy",
)


def _checkpoint(step_dir: Path, config: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    source = load_config(str(config))
    params = {name.replace(".", SEP): value for name, value in restore_numpy(step_dir).items()}
    return source.model, flat(lora.merge(nested(params), lora.scaling(source.finetune)))


def load_pretrained(init_from: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(model config, `{parameter path: array}`) of `init_from` (see the module doc)."""
    path = resolve_path(init_from, KEY).absolute()
    if (path / "config.json").is_file():
        cfg, params = from_pretrained(path)
        return cfg, flat(params)
    workdir = _run_workdir(path)
    if workdir == path:
        steps = [d for d in step_directories(path / "checkpoints") if d.name.isdigit()]
        if not steps:
            raise ConfigError(f"config key '{KEY}': no complete checkpoint in {path}")
        return _checkpoint(steps[-1], path / "config.yaml")
    if workdir is not None:
        return _checkpoint(path, workdir / "config.yaml")
    raise ConfigError(
        f"config key '{KEY}': {path} is neither a Hugging Face model directory (config.json), "
        "a jaxlm workdir (config.yaml) nor a checkpoint step directory"
    )


def _run_workdir(path: Path) -> Path | None:
    """The jaxlm workdir `path` is, or whose checkpoint step directory it is; else None."""
    if (path / "config.yaml").is_file():
        return path
    if path.name.isdigit() and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    return None


def pretrained_tokenizer(init_from: str) -> Path | None:
    """The tokenizer of the `init_from` weights: a Hugging Face directory itself when it holds
    one, or the jaxlm run's (its `data.tokenizer`, else its workdir's); None when there is none."""
    path = resolve_path(init_from, KEY).absolute()
    if (path / "config.json").is_file():
        has_one = (path / WORKDIR_SENTENCEPIECE).is_file() or tokenizer_files(path)
        return path if has_one else None
    workdir = _run_workdir(path)
    if workdir is None:
        return None
    tokenizer = run_tokenizer(load_config(str(workdir / "config.yaml")).data.tokenizer, workdir)
    return tokenizer if tokenizer.exists() else None


def resolve_model(run: ModelConfig, pretrained: ModelConfig) -> ModelConfig:
    """The pretrained architecture with the run's `RUN_KEYS`. A run value of another model key
    that is not the default and differs from the checkpoint's raises `ConfigError`."""
    default = ModelConfig()
    for field in dataclasses.fields(ModelConfig):
        mine, theirs = getattr(run, field.name), getattr(pretrained, field.name)
        if field.name not in RUN_KEYS and mine not in (getattr(default, field.name), theirs):
            raise ConfigError(
                f"config key 'model.{field.name}': {mine!r}, but the {KEY} checkpoint has "
                f"{theirs!r} (its architecture is used; leave the key out)"
            )
    return dataclasses.replace(pretrained, **{key: getattr(run, key) for key in RUN_KEYS})


def fill(boxed: dict, pretrained: dict[str, np.ndarray], log) -> dict:
    """`boxed` (a fresh init) with every parameter the checkpoint has replaced by its value;
    logs the parameters that keep their fresh init and the checkpoint's unused tensors."""
    leaves = flat(boxed)
    for path, leaf in leaves.items():
        if path in pretrained:
            value = pretrained[path]
            if value.shape != leaf.value.shape:
                raise ConfigError(
                    f"config key '{KEY}': {path} has shape {value.shape} in the checkpoint, "
                    f"{leaf.value.shape} in the model"
                )
            leaves[path] = leaf.replace_boxed(np.asarray(value, leaf.value.dtype))
    fresh = set(leaves) - set(pretrained)
    unused = set(pretrained) - set(leaves)
    log(
        f"{KEY}: {len(leaves) - len(fresh)} pretrained parameters"
        + (f"; newly initialised: {short_list(fresh)}" if fresh else "")
        + (f"; unused: {short_list(unused)}" if unused else "")
    )
    return nested(leaves)
