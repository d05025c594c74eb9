"""Paths in configs: a file or directory, or `package:<package>/<path>` inside an installed
Python package (found with importlib.resources), so that configs need no machine paths."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from jaxlm.errors import ConfigError

PACKAGE_PREFIX = "package:"


def resolve_path(spec: str, key: str) -> Path:
    """The path `spec` names; `key` (the config key) names it in errors. A package resource must
    exist; plain paths are returned as given."""
    if not spec.startswith(PACKAGE_PREFIX):
        return Path(spec)
    package, _, inner = spec[len(PACKAGE_PREFIX) :].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(
            f"config key '{key}': package {package!r} is not installed (pip install it)"
        ) from None
    resource = root.joinpath(inner) if inner else root
    path = Path(str(resource))
    if not path.exists():
        raise ConfigError(f"config key '{key}': package {package!r} has no {inner!r}")
    return path
