"""Hugging Face model directories <-> jaxlm workdirs (what `jaxlm convert` does).

An imported workdir holds `config.yaml` (the model, other sections at their defaults),
`checkpoints/0` (the weights with a fresh optimizer state, as a run that has not trained yet
saves them) and the Hugging Face directory's tokenizer: its sentencepiece `tokenizer.model`,
and the files `load_tokenizer` reads (`tokenizer.json`, a BERT `vocab.txt`, GPT-2's
`vocab.json` and `merges.txt` or Marian's `source.spm`, `target.spm` and `vocab.json`, with
`tokenizer_config.json`) in `tokenizer/`; T5's decoder start, its padding token, becomes the
copied tokenizer's BOS. `config.yaml`
names neither: the workdir finds its own tokenizer (`workdir_tokenizer`) wherever it is moved.
`jaxlm generate` and `jaxlm eval` load it like any trained workdir, and `jaxlm train` on its
`config.yaml` fine-tunes from the imported weights.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
from flax.traverse_util import unflatten_dict

from jaxlm.checkpoint import Checkpointer, restore_numpy, step_directories
from jaxlm.config import Config, DataConfig, TrainConfig, load_config, to_yaml, validate
from jaxlm.data.hf_tokenizer import (
    WORKDIR_HF,
    WORKDIR_SENTENCEPIECE,
    load_tokenizer,
    run_tokenizer,
    tokenizer_files,
)
from jaxlm.data.tokenizer_config import TOKENIZER_CONFIG, read_json
from jaxlm.errors import ConversionError, DataError
from jaxlm.finetune import lora
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
    (workdir / "config.yaml").write_text(to_yaml(cfg))
    _copy_tokenizer(source, workdir)
    return cfg


def _copy_tokenizer(source: Path, workdir: Path) -> None:
    """The sentencepiece model of `source` into `workdir`, its Hugging Face tokenizer files
    into `workdir/tokenizer/`."""
    if (source / WORKDIR_SENTENCEPIECE).is_file():
        shutil.copyfile(source / WORKDIR_SENTENCEPIECE, workdir / WORKDIR_SENTENCEPIECE)
    for file in tokenizer_files(source):
        (workdir / WORKDIR_HF).mkdir(exist_ok=True)
        shutil.copyfile(file, workdir / WORKDIR_HF / file.name)
    _decoder_start_as_bos(read_hf_config(source), workdir / WORKDIR_HF / TOKENIZER_CONFIG)


def _decoder_start_as_bos(hf: dict, settings_file: Path) -> None:
    """jaxlm's encoder-decoders start decoding from the tokenizer's BOS. A T5 tokenizer has
    none, its decoder starts from the padding token: the copied tokenizer_config.json then names
    the padding token as its bos_token (jaxlm's Marian tokenizer does the same)."""
    pad = hf.get("pad_token_id")
    starts_from_pad = pad is not None and hf.get("decoder_start_token_id") in (None, pad)
    settings = read_json(settings_file)
    lacks_bos = "pad_token" in settings and settings.get("bos_token") is None
    if hf.get("is_encoder_decoder") and starts_from_pad and lacks_bos:
        settings["bos_token"] = settings["pad_token"]
        settings_file.write_text(json.dumps(settings, indent=2) + "\n")


def export_workdir(workdir: str | Path, destination: str | Path, step: int | None = None) -> Path:
    """Write the parameters of a workdir's checkpoint `step` (default: the latest), with any LoRA
    update merged in, as a Hugging Face model directory, with the special token ids of the run's
    tokenizer; returns the checkpoint's directory."""
    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise ConversionError(f"{workdir} is not a jaxlm workdir (no config.yaml)")
    cfg = load_config(str(workdir / "config.yaml"))
    steps = [d for d in step_directories(workdir / "checkpoints") if d.name.isdigit()]
    if step is not None:
        steps = [d for d in steps if int(d.name) == step]
    if not steps:
        which = f"checkpoint {step}" if step is not None else "complete checkpoint"
        raise ConversionError(f"no {which} in {workdir / 'checkpoints'}")
    flat = restore_numpy(steps[-1].absolute())  # Orbax misreads relative paths
    params = unflatten_dict({tuple(name.split(".")): value for name, value in flat.items()})
    params = lora.merge(params, lora.scaling(cfg.finetune))
    save_pretrained(destination, cfg.model, params, _token_ids(cfg, workdir))
    return steps[-1]


def _token_ids(cfg: Config, workdir: Path) -> dict[str, int]:
    """The pad, bos and eos ids of the run's tokenizer, those it has ({} without one)."""
    path = run_tokenizer(cfg.data.tokenizer, workdir)
    if not path.exists():
        return {}
    tokenizer = load_tokenizer(str(path))
    ids = {}
    for name in ("pad", "bos", "eos"):
        with contextlib.suppress(DataError):  # a Hugging Face tokenizer may lack one
            ids[name] = getattr(tokenizer, f"{name}_id")
    return ids
