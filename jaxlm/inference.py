"""Load a trained model from its workdir for sampling or evaluation."""

from __future__ import annotations

from pathlib import Path

from jaxlm.checkpoint import Checkpointer
from jaxlm.config import Config, MeshConfig, load_config
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import JaxlmError
from jaxlm.parallel import make_mesh
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import state_shardings


def load_for_inference(workdir: Path) -> tuple[Config, dict, Tokenizer]:
    """(config, parameters of the latest checkpoint, tokenizer) of a training workdir."""
    if not (workdir / "config.yaml").is_file():
        raise JaxlmError(f"{workdir} is not a training workdir (no config.yaml)")
    cfg = load_config(str(workdir / "config.yaml"))
    tokenizer = Tokenizer.load(
        Path(cfg.data.tokenizer) if cfg.data.tokenizer else workdir / "tokenizer.model"
    )
    tx, _ = make_optimizer(cfg.optim, cfg.train.steps)
    abstract, shardings = state_shardings(cfg.model, tx, make_mesh(MeshConfig()))
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        state = checkpointer.restore(abstract, shardings)
    finally:
        checkpointer.close()
    return cfg, state.params, tokenizer
