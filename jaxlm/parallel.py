"""The device mesh, the one table of logical-to-mesh axis rules, and shardings built from them.

Parameters and activations carry logical axis names (`embed`, `heads`, `activation_batch`, ...);
`LOGICAL_AXIS_RULES` maps each to mesh axes. Data parallelism shards the batch over `data` and
`fsdp`; FSDP additionally shards parameters (and so optimizer state) over `fsdp` along `embed`;
tensor parallelism splits heads, MLP width and vocabulary over `tensor`. Key/value heads
(`kv_heads`) split over `tensor` too where their number allows, and are replicated where it does
not (fewer key/value heads than tensor shards: each shard keeps every key/value head, and
attention repeats them to the query heads, as Megatron-LM does).
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.config import MeshConfig
from jaxlm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("experts", None),  # each expert's MLP splits as a dense one: embed over fsdp, mlp over tensor
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # replicated where their number does not divide (see above)
    ("kv", None),
    ("layers", None),
    ("position", None),
    ("relative_buckets", None),
    ("type", None),
    ("norm", None),
    ("embed_out", None),
    ("classes", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)
BATCH_AXES = ("data", "fsdp")
REPLICATED_WHERE_UNEVEN = ("kv_heads", "activation_kv_heads")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with at most one -1 filled in so that their product is `num_devices`."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ConfigError("config key 'mesh': at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config key 'mesh': axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"config key 'mesh': {num_devices} devices are not divisible by {known}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config key 'mesh': data*fsdp*tensor = {math.prod(sizes)} "
            f"but {num_devices} devices are used"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor) over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Context in which models trace with activation sharding constraints on `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield


def mesh_axes_size(axes, mesh_shape) -> int:
    """How many ways mesh axes (None, a name or a tuple of names) split a dimension."""
    return math.prod(mesh_shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves may be boxed with logical axis names.

    A dimension named in `REPLICATED_WHERE_UNEVEN` that its mesh axes do not divide is
    replicated; any other that does not divide is a `ConfigError` naming the parameter.
    """
    logical = jax.tree.leaves(
        nn.get_partition_spec(boxed_tree), is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed_tree))
    shardings = []
    for (path, leaf), names in zip(leaves[0], logical, strict=True):
        spec = nn.logical_to_mesh_axes(tuple(names), LOGICAL_AXIS_RULES)
        axes = []
        for dim, name, mesh_axes in zip(leaf.shape, names, spec, strict=False):
            if dim % mesh_axes_size(mesh_axes, mesh.shape):
                if name not in REPLICATED_WHERE_UNEVEN:
                    where = jax.tree_util.keystr(path, simple=True, separator="/")
                    raise ConfigError(
                        f"{where} has shape {tuple(leaf.shape)}: dimension {dim} cannot be split "
                        f"{mesh_axes_size(mesh_axes, mesh.shape)} ways over mesh axes "
                        f"{mesh_axes}; change the mesh or the model size"
                    )
                mesh_axes = None
            axes.append(mesh_axes)
        shardings.append(NamedSharding(mesh, PartitionSpec(*axes)))
    return jax.tree.unflatten(leaves[1], shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch rows split over `data` and `fsdp`; everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host arrays (this process's rows) -> global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches: Iterator[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
    """`shard_batch` of each batch, started `size - 1` batches ahead: the copies to the devices
    run while the device works on the current step."""
    ready: collections.deque = collections.deque()
    for batch in batches:
        ready.append(shard_batch(batch, mesh))
        if len(ready) == size:
            yield ready.popleft()
    yield from ready


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % shards:
        raise ConfigError(
            f"config key 'data.batch_size': {batch_size} rows cannot be split over "
            f"data*fsdp = {shards} devices"
        )
