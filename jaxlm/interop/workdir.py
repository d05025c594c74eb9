"""Hugging Face model directories <-> jaxlm workdirs (what `jaxlm convert` does).

An imported workdir holds `config.yaml` (the model, other sections at their defaults),
`checkpoints/0` (the weights with a fresh optimizer state, as a run that has not trained yet
saves them) and the Hugging Face directory's tokenizer: its sentencepiece `tokenizer.model`,
and the files `load_tokenizer` reads (`tokenizer.json`, a BERT `vocab.txt`, GPT-2's
`vocab.json` and `merges.txt` or Marian's `source.spm`, `target.spm` and `vocab.json`, with
`tokenizer_config.json`) in `tokenizer/`; T5's decoder start, its padding token, becomes the
copied tokenizer's BOS. `config.yaml` names neither: the workdir finds its own tokenizer
(`workdir_tokenizer`: the files in `tokenizer/` when there are any, as `transformers` reads the
directory) wherever it is moved.
`jaxlm generate` and `jaxlm eval` load it like any trained workdir, and `jaxlm train` on its
`config.yaml` fine-tunes from the imported weights. The end-of-sequence ids of the directory's
`generation_config.json` besides its tokenizer's EOS (an instruct model's end of turn) become
`sample.stop_tokens`; an export writes them back there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
from flax.traverse_util import unflatten_dict

from jaxlm.checkpoint import Checkpointer, restore_numpy, step_directories
from jaxlm.config import Config, DataConfig, TrainConfig, load_config, to_yaml, validate
from jaxlm.data.hf_tokenizer import (
    WORKDIR_SENTENCEPIECE,
    adopt_tokenizer,
    configured_or_existing,
    copy_tokenizer,
    load_tokenizer,
    tokenizer_files,
    workdir_tokenizer,
)
from jaxlm.data.tokenizer_config import read_json
from jaxlm.errors import ConversionError, DataError
from jaxlm.finetune import lora
from jaxlm.generate import stop_ids
from jaxlm.interop.fast_tokenizer import write_hf_tokenizer
from jaxlm.interop.generation import GENERATION_CONFIG, generation_config, stop_tokens
from jaxlm.interop.hf import from_pretrained, read_hf_config, save_pretrained
from jaxlm.parallel import make_mesh
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import TrainState, state_shardings


def import_workdir(source: str | Path, workdir: str | Path) -> Config:
    """Write a jaxlm workdir holding the Hugging Face model in `source`; returns its config."""
    source, workdir = Path(source), Path(workdir)
    model_cfg, params = from_pretrained(source)
    seq_len = min(DataConfig.seq_len, model_cfg.max_len)
    cfg = Config(model=model_cfg, data=DataConfig(seq_len=seq_len), train=TrainConfig(str(workdir)))
    validate(cfg)
    tx, _ = make_optimizer(cfg.optim, cfg.train.steps)
    _, shardings = state_shardings(model_cfg, tx, make_mesh(cfg.mesh))
    params = jax.device_put(params, shardings.params)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        params=params,
        opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
    )
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        checkpointer.save(0, state)
    finally:
        checkpointer.close()
    adopt_tokenizer(source, workdir)
    generation, tokenizer = read_json(source / GENERATION_CONFIG), workdir_tokenizer(workdir)
    if generation and tokenizer.exists():
        stops = stop_tokens(generation, load_tokenizer(str(tokenizer)))
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, stop_tokens=stops))
    (workdir / "config.yaml").write_text(to_yaml(cfg))
    return cfg


def export_workdir(workdir: str | Path, destination: str | Path, step: int | None = None) -> Path:
    """Write the parameters of a workdir's checkpoint `step` (default: the latest), with any LoRA
    update merged in, as a Hugging Face model directory, with the run's tokenizer (its Hugging
    Face tokenizer files, or its sentencepiece `tokenizer.model` and the `tokenizer.json` that
    encodes as it does), its special token ids and (GPT, encoder-decoder) its `sample` settings
    as `generation_config.json`; returns the checkpoint's directory."""
    workdir, destination = Path(workdir), Path(destination)
    if not (workdir / "config.yaml").is_file():
        raise ConversionError(f"{workdir} is not a jaxlm workdir (no config.yaml)")
    cfg = load_config(str(workdir / "config.yaml"))
    if cfg.finetune.mode in ("prompt", "prefix"):
        raise ConversionError(
            f"{workdir} is a finetune.mode={cfg.finetune.mode} run, whose {cfg.finetune.mode} has "
            "no counterpart in transformers' models: full, partial and LoRA runs export"
        )
    tokenizer = configured_or_existing(cfg.data.tokenizer, workdir)
    if tokenizer is not None and not tokenizer.exists():
        raise ConversionError(
            f"data.tokenizer {tokenizer} of {workdir / 'config.yaml'} does not exist: restore "
            "it, or point data.tokenizer at the run's tokenizer"
        )
    steps = [d for d in step_directories(workdir / "checkpoints") if d.name.isdigit()]
    if step is not None:
        steps = [d for d in steps if int(d.name) == step]
    if not steps:
        which = f"checkpoint {step}" if step is not None else "complete checkpoint"
        raise ConversionError(f"no {which} in {workdir / 'checkpoints'}")
    flat = restore_numpy(steps[-1].absolute())  # Orbax misreads relative paths
    params = unflatten_dict({tuple(name.split(".")): value for name, value in flat.items()})
    params = lora.merge(params, lora.scaling(cfg.finetune))
    save_pretrained(destination, cfg.model, params, _token_ids(tokenizer))
    if cfg.model.family in ("gpt", "seq2seq"):
        stops = ()
        if tokenizer is not None and cfg.sample.stop_tokens:
            stops = stop_ids(load_tokenizer(str(tokenizer)), cfg.sample)
        settings = generation_config(cfg.sample, read_hf_config(destination), stops)
        (destination / GENERATION_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
    if tokenizer is not None:
        _export_tokenizer(tokenizer, workdir, cfg, destination)
    return steps[-1]


def _export_tokenizer(tokenizer: Path, workdir: Path, cfg: Config, destination: Path) -> None:
    """Copies the run's tokenizer into `destination`: Hugging Face files (with the workdir's
    `tokenizer.model` of an imported model beside them), or a sentencepiece `tokenizer.model`
    with the `tokenizer.json` and `tokenizer_config.json` that encode as it does (see
    `jaxlm.interop.fast_tokenizer`; a model without an exact equivalent goes alone, with a
    warning)."""
    sentencepiece = destination / WORKDIR_SENTENCEPIECE
    copy_tokenizer(tokenizer, sentencepiece, destination)
    own = workdir / WORKDIR_SENTENCEPIECE
    if not cfg.data.tokenizer and own.is_file() and not sentencepiece.exists():
        shutil.copyfile(own, sentencepiece)
    if tokenizer_files(destination):
        return
    try:
        write_hf_tokenizer(sentencepiece, destination, cfg.model.family, cfg.model.max_len)
    except ConversionError as e:
        warnings.warn(f"{e}; the export's tokenizer is {WORKDIR_SENTENCEPIECE} alone", stacklevel=3)


def _token_ids(tokenizer: Path | None) -> dict[str, int | None]:
    """The pad, bos and eos ids of a tokenizer, None for one it lacks (Qwen2's bos); {} without
    a tokenizer."""
    if tokenizer is None:
        return {}
    loaded = load_tokenizer(str(tokenizer))
    ids = {}
    for name in ("pad", "bos", "eos"):
        ids[name] = None
        with contextlib.suppress(DataError):  # a Hugging Face tokenizer may lack one
            ids[name] = getattr(loaded, f"{name}_id")
    return ids
