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
from jaxlm.train.optim import make_optimizer

FILE = "config.yaml"


def check_resumable(cfg: Config, workdir: Path) -> None:
    """Raise `ConfigError` when `cfg` would train another set of parameters (shapes, or what
    trains) or keep another optimizer state than the run whose checkpoints are in `workdir`,
    naming the keys that differ. Settings that leave both alone (compute dtype, remat, steps,
    learning rate...) may change on resume."""
    saved = workdir / FILE
    if not saved.is_file():
        return
    try:
        before = load_config(str(saved))
    except ConfigError:  # written by another version: the restore will tell
        return
    if _checkpointed_state(before) == _checkpointed_state(cfg):
        return
    changed = [
        f"{section}.{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for section, names in STATE_KEYS.items()
        for old, new in [(getattr(before, section), getattr(cfg, section))]
        for name in names or [field.name for field in dataclasses.fields(old)]
        if getattr(old, name) != getattr(new, name)
    ]
    raise ConfigError(
        f"{workdir} holds checkpoints of other parameters or optimizer state "
        f"({', '.join(changed)}): resume with the settings in its config.yaml, or use a new "
        "train.workdir"
    )


# The config keys that shape a checkpoint (None: the whole section); the optimizer state has
# another structure for another optimizer, with clipping on or off, and SGD or Adafactor with
# momentum or not.
STATE_KEYS = {
    "model": None,
    "finetune": None,
    "optim": ("optimizer", "grad_clip", "b1", "adafactor_momentum"),
}


def _checkpointed_state(cfg: Config):
    """What a checkpoint of `cfg`'s run holds: every parameter's shape, what trains, and the
    optimizer state's structure and shapes."""
    params = nn.unbox(checkpointed_params(cfg))
    tx, _ = make_optimizer(cfg.optim, cfg.train.steps)
    opt_state = jax.eval_shape(tx.init, params)
    shapes = [x.shape for x in jax.tree.leaves((params, opt_state))]
    trains = cfg.finetune.mode, tuple(cfg.finetune.trainable)
    return jax.tree.structure((params, opt_state)), shapes, trains


def save(cfg: Config, workdir: Path) -> None:
    """Write `cfg` as the workdir's config.yaml, atomically (other processes may be reading)."""
    partial = workdir / f"{FILE}.partial"
    partial.write_text(to_yaml(cfg))
    partial.replace(workdir / FILE)
