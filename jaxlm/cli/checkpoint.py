"""`jaxlm checkpoint list DIR | inspect CHECKPOINT | export CHECKPOINT OUT.safetensors`.

DIR is a training workdir or its `checkpoints` folder; CHECKPOINT is a step folder (DIR/STEP)
or a DIR, whose latest finished step it then means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlm.errors import JaxlmError

CHECKPOINT_HELP = "DIR/STEP, or a workdir or checkpoints folder: its latest finished step"


def _checkpoint_dir(path: str) -> Path:
    """A run's `checkpoints` folder, given it or the workdir that holds it."""
    directory = Path(path)
    return directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory


def _step_dir(path: str) -> Path:
    """The step folder `path` names: itself, or the latest finished step of a workdir or
    checkpoints folder."""
    from jaxlm.checkpoint import TMP_MARK, step_directories

    given = Path(path)
    if given.name.isdigit():
        return given
    finished = [p for p in step_directories(_checkpoint_dir(path)) if TMP_MARK not in p.name]
    if not finished:
        raise JaxlmError(f"no finished checkpoint in {_checkpoint_dir(path)}")
    return finished[-1]


def list_steps(args) -> None:
    from jaxlm.checkpoint import TMP_MARK, read_meta, step_directories

    for step_dir in step_directories(_checkpoint_dir(args.directory)):
        if TMP_MARK in step_dir.name:
            print(f"{step_dir.name.split('.')[0]:>8}  unfinished  {step_dir.name}")
            continue
        try:
            meta = read_meta(step_dir)
        except JaxlmError:
            print(f"{step_dir.name:>8}  unreadable")
            continue
        metrics = " ".join(f"{k}={v:.6g}" for k, v in sorted(meta.get("metrics", {}).items()))
        print(f"{step_dir.name:>8}  complete  {metrics}".rstrip())


def inspect(args) -> None:
    from jaxlm.checkpoint import array_metadata, read_meta

    step_dir = _step_dir(args.checkpoint)
    meta = read_meta(step_dir)
    print(f"step: {meta['step']}")
    print(f"data batches consumed: {meta['data_batches_consumed']}")
    for name, value in sorted(meta.get("metrics", {}).items()):
        print(f"{name}: {value:.6g}")
    arrays = array_metadata(step_dir)
    width = max(len(name) for name in arrays)
    for name, (shape, dtype) in arrays.items():
        print(f"{name:<{width}}  {dtype:<8} {shape}")
    params = sum(
        int(np.prod(shape)) for name, (shape, _) in arrays.items() if name.startswith("params.")
    )
    print(f"parameters: {params}")


def export(args) -> None:
    from safetensors.numpy import save_file

    from jaxlm.checkpoint import restore_numpy

    params = restore_numpy(_step_dir(args.checkpoint))
    save_file({name: np.ascontiguousarray(value) for name, value in params.items()}, args.output)
    print(f"wrote {len(params)} parameter arrays to {args.output}")


def register(commands) -> None:
    parser = commands.add_parser("checkpoint", help="list, inspect and export checkpoints")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="steps, whether complete, stored metrics")
    listing.add_argument("directory", help="a checkpoints folder or a training workdir")
    listing.set_defaults(run=list_steps)
    inspecting = actions.add_parser("inspect", help="step, metrics, array paths, shapes, dtypes")
    inspecting.add_argument("checkpoint", help=CHECKPOINT_HELP)
    inspecting.set_defaults(run=inspect)
    exporting = actions.add_parser("export", help="the parameters as a safetensors file")
    exporting.add_argument("checkpoint", help=CHECKPOINT_HELP)
    exporting.add_argument("output", help="OUT.safetensors (names joined by '.')")
    exporting.set_defaults(run=export)
