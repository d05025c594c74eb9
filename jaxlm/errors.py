"""User-facing errors: raised for bad input, printed by the CLI as one line."""


class JaxlmError(Exception):
    """A problem with what the user gave (config, data, checkpoint, flag), not a bug."""


class ConfigError(JaxlmError):
    """An unknown key, a wrong type or an invalid value in a config."""


class DataError(JaxlmError):
    """A missing, empty or unreadable dataset or tokenizer."""


class ConversionError(JaxlmError):
    """A checkpoint that cannot be converted: unsupported architecture, missing or extra tensors."""
