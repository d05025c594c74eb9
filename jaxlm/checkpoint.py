"""Orbax checkpoints of the sharded train state in `<workdir>/checkpoints/<step>`."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxlm.errors import JaxlmError


class Checkpointer:
    """Saves the train state asynchronously every time it is asked, keeping the last few."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, abstract_state, shardings, step: int | None = None):
        """The state saved at `step` (default: latest), laid out with `shardings`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise JaxlmError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            shardings,
        )
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except (ValueError, FileNotFoundError, KeyError) as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise JaxlmError(
                f"cannot restore checkpoint {self.directory / str(step)}: {message}"
            ) from None

    def close(self) -> None:
        """Wait for pending saves, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
