"""A pretrained tokenizer's `tokenizer_config.json`: its settings and special tokens."""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.errors import DataError

TOKENIZER_CONFIG = "tokenizer_config.json"


def read_json(path: Path) -> dict:
    """A JSON object from `path` ({} when there is no such file)."""
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(settings, dict):
        raise DataError(f"{path}: not a JSON object")
    return settings


def token_text(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token
