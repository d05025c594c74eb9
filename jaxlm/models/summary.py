"""Parameter counts and a readable table of a model's parameters, computed without allocating."""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from jaxlm.config import ModelConfig
from jaxlm.models import init_params


def abstract_params(cfg: ModelConfig) -> dict:
    """Shapes, dtypes and logical axis names of every parameter (no memory is allocated)."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def parameter_leaves(boxed: dict) -> list[tuple[str, tuple, tuple | None]]:
    """(path, shape, logical axis names) for every parameter."""
    flat = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    rows = []
    for path, leaf in flat:
        names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else None
        value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
        rows.append(("/".join(str(getattr(k, "key", k)) for k in path), tuple(value.shape), names))
    return rows


def real_size(shape: tuple, names: tuple | None, cfg: ModelConfig) -> int:
    """Elements of a parameter, not counting rows added only to pad the vocabulary."""
    size = math.prod(shape)
    if names and "vocab" in names:
        size = size // cfg.padded_vocab_size * cfg.vocab_size
    return size


def count_parameters(cfg: ModelConfig, boxed: dict | None = None) -> int:
    """Trainable parameters as published (vocabulary padding excluded)."""
    boxed = abstract_params(cfg) if boxed is None else boxed
    return sum(real_size(shape, names, cfg) for _, shape, names in parameter_leaves(boxed))


def parameter_table(cfg: ModelConfig, boxed: dict | None = None) -> str:
    """One line per parameter: path, shape, logical axes, count; then the total."""
    boxed = abstract_params(cfg) if boxed is None else boxed
    rows = parameter_leaves(boxed)
    width = max(len(path) for path, _, _ in rows)
    lines = [f"{'parameter':<{width}}  {'shape':<22} {'logical axes':<36} count"]
    for path, shape, names in rows:
        axes = ", ".join(str(n) for n in names) if names else "-"
        lines.append(
            f"{path:<{width}}  {str(shape):<22} {axes:<36} {real_size(shape, names, cfg):,}"
        )
    lines.append(f"parameters: {count_parameters(cfg, boxed)}")
    return "\n".join(lines)
