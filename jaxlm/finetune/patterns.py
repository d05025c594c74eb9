"""Parameters by path: `encoder/layers/mlp/wi/kernel`, selected with glob or regex patterns."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.errors import ConfigError
from jaxlm.interop.mapping import short_list

SEP = "/"


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
