"""The workdir's `config.yaml`: the config a run trains with. A run that resumes is checked
against it, so that a changed model is a clear error rather than an unreadable checkpoint and
a `config.yaml` that no longer describes the checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax

from jaxlm.config import Config, load_config, to_yaml
from jaxlm.errors import ConfigError
from jaxlm.finetune import checkpointed_params

FILE = "config.yaml"


def check_resumable(cfg: Config, workdir: Path) -> None:
    """Raise `ConfigError` when `cfg` would train another set of parameters (shapes, or what
    trains) than the run whose checkpoints are in `workdir`, naming the model and finetune keys
    that differ. Settings that leave them alone (compute dtype, remat, steps, learning rate...)
    may change on resume."""
    saved = workdir / FILE
    if not saved.is_file():
        return
    try:
        before = load_config(str(saved))
    except ConfigError:  # written by another version: the restore will tell
        return
    if _trained_parameters(before) == _trained_parameters(cfg):
        return
    changed = [
        f"{section}.{field.name} {getattr(old, field.name)!r} -> {getattr(new, field.name)!r}"
        for section in ("model", "finetune")
        for old, new in [(getattr(before, section), getattr(cfg, section))]
        for field in dataclasses.fields(old)
        if getattr(old, field.name) != getattr(new, field.name)
    ]
    raise ConfigError(
        f"{workdir} holds checkpoints of other parameters ({', '.join(changed)}): resume with "
        "the settings in its config.yaml, or use a new train.workdir"
    )


def _trained_parameters(cfg: Config):
    """What a checkpoint of `cfg`'s run holds: every parameter's shape, and what trains."""
    shapes = jax.tree.map(lambda p: p.shape, nn.unbox(checkpointed_params(cfg)))
    return shapes, cfg.finetune.mode, tuple(cfg.finetune.trainable)


def save(cfg: Config, workdir: Path) -> None:
    """Write `cfg` as the workdir's config.yaml, atomically (other processes may be reading)."""
    partial = workdir / f"{FILE}.partial"
    partial.write_text(to_yaml(cfg))
    partial.replace(workdir / FILE)
