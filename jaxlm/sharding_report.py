"""How the train state is laid out on a mesh of any shape, computed without devices or memory.

    print(sharding_report(load_config("gpt2-small"), abstract_mesh(parse_mesh("fsdp=8"))))

The shardings are those training uses (`state_shardings`), built on a `jax.sharding.AbstractMesh`,
so a 256-chip layout can be inspected on a laptop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AbstractMesh

from jaxlm.config import Config, MeshConfig
from jaxlm.errors import ConfigError
from jaxlm.models.summary import abstract_params, parameter_leaves
from jaxlm.parallel import MESH_AXES
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import state_shardings

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def parse_mesh(text: str) -> MeshConfig:
    """`data=2,fsdp=2,tensor=2` -> MeshConfig; axes left out have size 1."""
    sizes = {}
    for item in text.split(","):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in MESH_AXES or name in sizes or not value.isdecimal() or int(value) < 1:
            raise ConfigError(
                f"--mesh {text!r}: expected AXIS=SIZE pairs separated by commas, with axes "
                f"{', '.join(MESH_AXES)} each at most once and positive sizes, "
                f"e.g. data=2,fsdp=2,tensor=2"
            )
        sizes[name] = int(value)
    return MeshConfig(**{axis: sizes.get(axis, 1) for axis in MESH_AXES})


def abstract_mesh(cfg: MeshConfig) -> AbstractMesh:
    """A mesh of the given axis sizes with no devices behind it."""
    sizes = tuple(getattr(cfg, axis) for axis in MESH_AXES)
    if any(size < 1 for size in sizes):
        raise ConfigError(
            f"config key 'mesh': a mesh without devices needs every size, got {sizes}"
        )
    return AbstractMesh(sizes, MESH_AXES)


def _mesh_axes(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


@dataclass(frozen=True)
class LeafLayout:
    """One array of the state: its global shape and how the mesh splits it."""

    path: str
    shape: tuple[int, ...]
    itemsize: int
    spec: tuple  # one entry per dimension: None, a mesh axis, or a tuple of mesh axes
    local_shape: tuple[int, ...]  # one device's shard (rounded up where a split is uneven)
    names: tuple | None = None  # logical axis names (parameters only)

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    @property
    def local_bytes(self) -> int:
        return math.prod(self.local_shape) * self.itemsize

    def spec_text(self) -> str:
        """`P(None, 'fsdp', 'tensor')`, one entry per dimension."""
        entries = (repr(e if e is None or isinstance(e, str) else tuple(e)) for e in self.spec)
        return f"P({', '.join(entries)})"


def _layout(path: str, leaf, sharding, mesh, names: tuple | None = None) -> LeafLayout:
    spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
    local = tuple(
        -(-dim // math.prod(mesh.shape[a] for a in _mesh_axes(entry)))
        for dim, entry in zip(leaf.shape, spec, strict=True)
    )
    itemsize = np.dtype(leaf.dtype).itemsize
    return LeafLayout(path, tuple(leaf.shape), itemsize, spec, local, names)


@dataclass(frozen=True)
class StateLayout:
    """Parameters and optimizer state of a train state on a mesh of `devices` devices."""

    params: list[LeafLayout]
    opt_state: list[LeafLayout]
    devices: int

    def totals(self) -> dict[str, tuple[int, int]]:
        """{"parameters" | "optimizer state" | "total": (replicated bytes, bytes per device)}."""
        groups = {
            "parameters": self.params,
            "optimizer state": self.opt_state,
            "total": self.params + self.opt_state,
        }
        return {
            name: (sum(x.bytes for x in leaves), sum(x.local_bytes for x in leaves))
            for name, leaves in groups.items()
        }


def state_layout(cfg: Config, mesh) -> StateLayout:
    """The layout training would use on `mesh` (an AbstractMesh or a Mesh); allocates nothing.

    Raises ConfigError naming the parameter when the mesh does not divide one of its dimensions.
    """
    tx, _ = make_optimizer(cfg.optim, cfg.train.steps)
    abstract, shardings = state_shardings(cfg.model, tx, mesh)
    params = [
        _layout(path, leaf, sharding, mesh, names)
        for (path, _, names), leaf, sharding in zip(
            parameter_leaves(abstract_params(cfg.model)),
            jax.tree.leaves(abstract.params),
            jax.tree.leaves(shardings.params),
            strict=True,
        )
    ]
    opt_state = [
        _layout(jax.tree_util.keystr(path, simple=True, separator="/"), leaf, sharding, mesh)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_flatten_with_path(abstract.opt_state)[0],
            jax.tree.leaves(shardings.opt_state),
            strict=True,
        )
    ]
    return StateLayout(params, opt_state, mesh.size)


def mesh_text(mesh) -> str:
    return ",".join(f"{axis}={size}" for axis, size in mesh.shape.items())


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    power = 0
    while count >= 1024 ** (power + 1) and power < len(BYTE_UNITS) - 1:
        power += 1
    return f"{count:.0f} B" if power == 0 else f"{count / 1024**power:.1f} {BYTE_UNITS[power]}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines of left-aligned columns."""
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(f"{c:<{w}}" for c, w in zip(row[:-1], width, strict=True)), row[-1]])
        for row in rows
    ]


def partition_spec_table(cfg: Config, mesh) -> str:
    """One line per parameter: path, shape, PartitionSpec (the golden-file format)."""
    layout = state_layout(cfg, mesh)
    return "\n".join(_table([(p.path, str(p.shape), p.spec_text()) for p in layout.params]))


def sharding_report(cfg: Config, mesh) -> str:
    """Every parameter's shape, logical axes, PartitionSpec and per-device shard; then the
    bytes of parameters and optimizer state, whole (replicated) and on each device."""
    layout = state_layout(cfg, mesh)
    rows = [("parameter", "shape", "logical axes", "partition spec", "per device")]
    for leaf in layout.params:
        axes = ", ".join(str(n) for n in leaf.names) if leaf.names else "-"
        rows.append((leaf.path, str(leaf.shape), axes, leaf.spec_text(), str(leaf.local_shape)))
    totals = [("bytes", "replicated", "per device")]
    for name, (whole, local) in layout.totals().items():
        totals.append(
            (name, f"{format_bytes(whole)} ({whole:,})", f"{format_bytes(local)} ({local:,})")
        )
    return "\n".join(
        [f"mesh: {mesh_text(mesh)} ({layout.devices} devices)", *_table(rows), "", *_table(totals)]
    )
