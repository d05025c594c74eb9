"""Configs from YAML presets or files, with dotted overrides, and back to YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jaxlm.config.schema import Config
from jaxlm.config.validation import validate
from jaxlm.errors import ConfigError

PRESET_DIR = Path(__file__).parents[1] / "configs"


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in `configs/`."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def _read_yaml(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {name_or_path}")
        text = path.read_text()
    elif name_or_path in preset_names():
        text = (PRESET_DIR / f"{name_or_path}.yaml").read_text()
    else:
        presets = ", ".join(preset_names())
        raise ConfigError(
            f"unknown config {name_or_path!r}: not a YAML file, nor a preset ({presets})"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name_or_path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name_or_path}: a config file must hold a mapping of sections")
    return data


def _one_line(error: OmegaConfBaseException) -> str:
    message = str(getattr(error, "msg", None) or error).splitlines()[0]
    key = getattr(error, "full_key", None)
    if "not in" in message and key:
        return f"unknown config key '{key}'"
    return f"config key '{key}': {message}" if key else f"config: {message}"


def load_config(name_or_path: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML (preset name or file path) <- dotted `key=value` overrides, validated."""
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, _read_yaml(name_or_path) if name_or_path else {})
        for override in overrides:
            if "=" not in override:
                raise ConfigError(f"override {override!r} is not of the form section.key=value")
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
            except yaml.YAMLError as e:
                problem = " ".join(str(e).split("\n")[:3:2])  # "while scanning ... found ..."
                raise ConfigError(
                    f"override {override!r} is not valid YAML ({problem}): quote items "
                    "that hold brackets or colons, as in key=['a[1:]']"
                ) from None
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    validate(config)
    return config


def to_yaml(config: Config) -> str:
    """The config as YAML; `load_config` on it gives the same config back."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
