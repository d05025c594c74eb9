"""Orbax checkpoints of the sharded train state in `<workdir>/checkpoints/<step>`.

Each step directory holds two items: `state` (the `TrainState`, saved asynchronously) and
`meta` (JSON: the step, the number of training batches consumed and any metrics). A save that
was cut short leaves only an `<step>.orbax-checkpoint-tmp*` directory, which is never read.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxlm.errors import JaxlmError
from jaxlm.interop.mapping import short_list

STATE, META = "state", "meta"
LEGACY_ITEM = "default"  # checkpoints written before `meta` existed: the state alone
TMP_MARK = ".orbax-checkpoint-tmp"

# Orbax logs every save and deletion at INFO and a tensorstore traceback before each failed
# restore; the Checkpointer reports what matters itself.
logging.getLogger("absl").setLevel(logging.ERROR)


class CheckpointWarning(UserWarning):
    """A checkpoint directory was skipped because it is unfinished or unreadable."""


def _quiet_failed_read_callbacks() -> None:
    """Stop Python printing the stray errors of a failed restore as tracebacks.

    When one array of a checkpoint cannot be read, Orbax closes its event loop while other reads
    are still in flight; their callbacks then fail as "unraisable" exceptions in Orbax or asyncio
    code, or asyncio logs their never-retrieved TensorStore errors. The restore itself raises a
    proper error; these are dropped.
    """
    logging.getLogger("asyncio").addFilter(_drop_tensorstore_records)
    previous = sys.unraisablehook
    if getattr(previous, "jaxlm_quiet", False):
        return

    def hook(unraisable) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        if not any("orbax" in f.filename or "asyncio" in f.filename for f in frames):
            previous(unraisable)

    hook.jaxlm_quiet = True
    sys.unraisablehook = hook


def _drop_tensorstore_records(record: logging.LogRecord) -> bool:
    return "never retrieved" not in str(record.msg) or "tensorstore" not in record.getMessage()


def _first_line(error: BaseException) -> str:
    """The gist of an Orbax / TensorStore error: its first line, without the TensorStore spec."""
    text = str(error).strip().split(" See full TensorStore details")[0]
    return text.splitlines()[0][:300] if text else type(error).__name__


def _preservation(
    keep: int, keep_best: int, best_metric: str, best_mode: str
) -> pp.PreservationPolicy:
    """The last `keep` steps, plus the `keep_best` best by `best_metric` (when > 0): the lowest
    (`best_mode` min) or the highest (max)."""
    latest = pp.LatestN(n=keep)
    if keep_best <= 0:
        return latest
    best = pp.BestN(
        get_metric_fn=lambda metrics: metrics[best_metric],
        reverse=best_mode == "min",  # BestN keeps the tail of the sorted list
        n=keep_best,
        keep_checkpoints_without_metrics=False,
    )
    return pp.AnyPreservationPolicy(policies=[latest, best])


def has_checkpoints(directory: Path) -> bool:
    """Whether `directory` holds a finished checkpoint (read without opening a manager)."""
    return directory.is_dir() and bool(ocp.utils.checkpoint_steps(directory))


class Checkpointer:
    """Asynchronous saves of the train state and its data position; fault-tolerant restores.

    Keeps the last `max_to_keep` steps and, with `keep_best` > 0, also the `keep_best` steps
    with the lowest (`best_mode` "min") or highest ("max") `best_metric` among those saved with
    metrics. `clean_unfinished` (for the one process that trains in the directory) removes what
    interrupted saves left behind.
    """

    def __init__(
        self,
        directory: str | Path,
        max_to_keep: int = 3,
        *,
        keep_best: int = 0,
        best_metric: str = "eval_loss",
        best_mode: str = "min",
        read_only: bool = False,
        clean_unfinished: bool = False,
    ):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        clean_unfinished = clean_unfinished and not read_only
        if clean_unfinished:
            for tmp in sorted(self.directory.glob(f"*{TMP_MARK}*")):
                warnings.warn(f"removing unfinished checkpoint {tmp}", CheckpointWarning, 2)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=clean_unfinished,
                preservation_policy=_preservation(max_to_keep, keep_best, best_metric, best_mode),
            ),
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        """The finished steps, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, metrics: dict[str, float] | None = None) -> None:
        """Start an asynchronous save; `state` may be donated once this returns."""
        meta = {"step": step, "data_batches_consumed": step, "metrics": metrics or {}}
        best = {k: v for k, v in (metrics or {}).items() if k == self.best_metric}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
            ),
            metrics=best or None,
            force=True,
        )

    def restore(self, abstract_state, shardings, step: int | None = None):
        """The state saved at `step`, laid out with `shardings`.

        Without `step`, the latest step that restores completely: newer broken steps are
        skipped with a `CheckpointWarning` naming their directory.
        """
        return self.restore_with_meta(abstract_state, shardings, step)[0]

    def restore_with_meta(self, abstract_state, shardings, step: int | None = None):
        """(state, meta) of `step` or of the latest readable step; see `restore`."""
        target = _target(abstract_state, shardings)
        return self._first_readable(lambda candidate: self._restore(candidate, target), step)

    def restore_params(self, abstract_params, shardings, step: int | None = None):
        """The parameters alone of `step` or of the latest readable step (see `restore`), laid
        out with `shardings`; the optimizer state is not read. A checkpoint whose parameters
        differ from `abstract_params` in name or shape raises `JaxlmError` naming them."""
        target = {"params": _target(abstract_params, shardings)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)

        def read(candidate: int):
            state_dir = _state_dir(self.directory / str(candidate))
            _check_params(state_dir, target)
            args = ocp.args.PyTreeRestore(target, restore_args, partial_restore=True)
            return ocp.PyTreeCheckpointer().restore(state_dir, args=args)["params"]

        return self._first_readable(read, step)

    def _first_readable(self, read, step: int | None):
        """`read(step)`, or without `step` `read` of the newest step it succeeds on. Another
        error than a `JaxlmError` marks a step unreadable."""
        candidates = [step] if step is not None else self.all_steps()[::-1]
        if not candidates:
            raise JaxlmError(f"no checkpoint in {self.directory}")
        errors = []
        _quiet_failed_read_callbacks()
        for candidate in candidates:
            try:
                return read(candidate)
            except JaxlmError:
                raise
            except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
                errors.append(f"{self.directory / str(candidate)}: {_first_line(e)}")
                if step is None:
                    warnings.warn(
                        f"skipping unreadable checkpoint {self.directory / str(candidate)}: "
                        f"{_first_line(e)}",
                        CheckpointWarning,
                        2,
                    )
        if step is not None:
            raise JaxlmError(f"cannot restore checkpoint {errors[0]}")
        raise JaxlmError(f"no readable checkpoint in {self.directory} (tried {len(errors)} steps)")

    def _restore(self, step: int, target) -> tuple[Any, dict]:
        legacy = self.directory / str(step) / LEGACY_ITEM
        if legacy.is_dir() and not (self.directory / str(step) / STATE).exists():
            state = ocp.StandardCheckpointer().restore(legacy, target)
            return state, {"step": step, "data_batches_consumed": step, "metrics": {}}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
            ),
        )
        meta = dict(restored[META])
        if meta.get("step") != step:
            raise ValueError(f"metadata names step {meta.get('step')}, not {step}")
        return restored[STATE], meta

    def discard_after(self, step: int) -> list[int]:
        """Delete the (unreadable) steps newer than `step` so that training can save them anew."""
        newer = [s for s in self.all_steps() if s > step]
        for s in newer:
            self.manager.delete(s)
        self.manager.reload()
        return newer

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _target(abstract, shardings):
    """ShapeDtypeStructs carrying the shardings to restore into."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _check_params(state_dir: Path, target: dict) -> None:
    """Raise `JaxlmError` unless the saved parameters have the names and shapes of those in
    `target` (a partial restore would leave a missing one unread, and say nothing)."""
    tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
    saved, wanted = (
        {name: tuple(leaf.shape) for name, leaf in _leaves(dict(t)["params"]).items()}
        for t in (tree, target)
    )
    differences = {
        "missing": wanted.keys() - saved.keys(),
        "unexpected": saved.keys() - wanted.keys(),
        "of another shape": {n for n in saved.keys() & wanted.keys() if saved[n] != wanted[n]},
    }
    if any(differences.values()):
        listed = "; ".join(f"{k}: {short_list(v, 3)}" for k, v in differences.items() if v)
        raise JaxlmError(
            f"checkpoint {state_dir.parent} does not hold the parameters of the model its "
            f"config describes ({listed})"
        )


def _leaves(tree) -> dict:
    """`{dotted name: leaf}` of a tree."""
    return {_dotted(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---- reading checkpoints without a config: `jaxlm checkpoint list / inspect / export` ----


def step_directories(directory: Path) -> list[Path]:
    """Every `<step>` and unfinished `<step>.orbax-checkpoint-tmp*` directory, by step."""
    if not directory.is_dir():
        raise JaxlmError(f"checkpoint directory not found: {directory}")
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.split(".")[0].isdigit()]
    return sorted(found, key=lambda p: (int(p.name.split(".")[0]), p.name))


def read_meta(step_dir: Path) -> dict:
    """The JSON `meta` item of a step directory (without restoring any array)."""
    path = step_dir / META / "metadata"
    if not path.exists() and (step_dir / LEGACY_ITEM).is_dir():
        step = int(step_dir.name)
        return {"step": step, "data_batches_consumed": step, "metrics": {}}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise JaxlmError(f"cannot read checkpoint metadata {path}: {_first_line(e)}") from None


def _state_dir(step_dir: Path) -> Path:
    """The state item of a step directory, as an absolute path (Orbax needs one)."""
    for item in (STATE, LEGACY_ITEM):
        if (step_dir / item).is_dir():
            return (step_dir / item).absolute()
    raise JaxlmError(f"{step_dir} is not a checkpoint step (no '{STATE}' item)")


def array_metadata(step_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{"params.decoder.…": (shape, dtype)}` of the saved state, read from Orbax metadata."""
    state_dir = _state_dir(step_dir)
    try:
        tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
    except Exception as e:  # noqa: BLE001
        raise JaxlmError(f"cannot read checkpoint {step_dir}: {_first_line(e)}") from None
    return {
        _dotted(path): (tuple(leaf.shape), str(leaf.dtype))
        for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]
    }


def restore_numpy(step_dir: Path, prefix: str = "params") -> dict[str, np.ndarray]:
    """`{dotted name: array}` of the saved leaves under `prefix` ("" = all), as NumPy arrays."""
    state_dir = _state_dir(step_dir)
    try:
        checkpointer = ocp.PyTreeCheckpointer()
        tree = dict(checkpointer.metadata(state_dir).item_metadata)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(state_dir, restore_args=restore_args)
    except Exception as e:  # noqa: BLE001
        raise JaxlmError(f"cannot restore checkpoint {step_dir}: {_first_line(e)}") from None
    flat = {
        _dotted(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]
    }
    if not prefix:
        return flat
    return {
        name[len(prefix) + 1 :]: value
        for name, value in flat.items()
        if name.startswith(prefix + ".")
    }


def _dotted(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)
