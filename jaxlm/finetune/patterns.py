"""Parameters by path: `encoder/layers/mlp/wi/kernel`, selected with glob or regex patterns; a
glob may pick layers of a stack with a range after `layers`: `decoder/layers[8:]/mlp`."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.errors import ConfigError
from jaxlm.interop.mapping import short_list

SEP = "/"
STACK_AXIS = "layers"  # the logical name of a layer stack's leading axis (`nn.scan`)
LAYER_RANGE = re.compile(r"(?<=layers)\[(-?\d*):(-?\d*)\]")  # a slice of a stack's layers


def flat(tree: dict) -> dict[str, object]:
    """`{"encoder/layers/mlp/wi/kernel": leaf, ...}` of a nested parameter dict."""
    return flatten_dict(tree, sep=SEP)


def nested(leaves: dict[str, object]) -> dict:
    """The nested dict of `flat` leaves."""
    return unflatten_dict(leaves, sep=SEP)


def matches(pattern: str, path: str) -> bool:
    """A glob (`*` also crosses `/`) or, after `re:`, a regular expression, matching the whole
    path or a leading part of it (a module's path selects all of its parameters)."""
    parts = path.split(SEP)
    prefixes = [SEP.join(parts[:n]) for n in range(1, len(parts) + 1)]
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:])
        return any(regex.fullmatch(prefix) for prefix in prefixes)
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def select(paths: Iterable[str], patterns: Iterable[str], key: str) -> set[str]:
    """The paths some pattern matches; a pattern that matches none raises `ConfigError` naming
    the config `key`."""
    paths = list(paths)
    selected = set()
    for pattern in patterns:
        found = {path for path in paths if matches(pattern, path)}
        if not found:
            raise ConfigError(
                f"config key '{key}': {pattern!r} matches no parameter (they are "
                f"{short_list(paths, 4)})"
            )
        selected |= found
    return selected


def select_layers(
    stacks: Mapping[str, int | None], patterns: Iterable[str], key: str
) -> tuple[set[str], dict[str, tuple[bool, ...]]]:
    """`select` over `stacks` (each path with its stack's layer count, None outside a stack),
    where a pattern may end its `layers` segment with a range of layers, as a Python slice:
    `decoder/layers[8:]`, `encoder/layers[:2]/attention`. Returns (the paths selected, and for
    those selected in some layers only, which of them). A range that is empty or matches a
    parameter outside a stack raises `ConfigError` naming `key`."""
    selected, rows = set(), {}
    for pattern in patterns:
        ranges = LAYER_RANGE.findall(pattern)
        found = select(stacks, [LAYER_RANGE.sub("", pattern)], key)
        if len(ranges) > 1:
            raise ConfigError(f"config key '{key}': {pattern!r} has more than one layer range")
        for path in found:
            count = stacks[path]
            if not ranges:
                rows[path] = (True,) * (count or 1)
                continue
            if count is None:
                raise ConfigError(
                    f"config key '{key}': {pattern!r} takes layers of {path}, which is not in "
                    "a layer stack"
                )
            start, stop = (int(bound) if bound else None for bound in ranges[0])
            chosen = np.zeros(count, bool)
            chosen[start:stop] = True
            if not chosen.any():
                raise ConfigError(
                    f"config key '{key}': {pattern!r} selects none of the {count} layers of {path}"
                )
            rows[path] = tuple(np.logical_or(rows.get(path, False), chosen).tolist())
        selected |= found
    partial = {path: chosen for path, chosen in rows.items() if not all(chosen)}
    return selected, partial


def layer_counts(boxed: dict) -> dict[str, int | None]:
    """Each parameter's path with its stack's layer count (the length of its leading `layers`
    axis), or None outside a stack, from boxed (logically partitioned) parameters."""
    return {
        path: leaf.value.shape[0] if leaf.names[:1] == (STACK_AXIS,) else None
        for path, leaf in flat(boxed).items()
    }
