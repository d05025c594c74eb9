"""jaxlm: pretrain, fine-tune, evaluate and sample Transformer language models with JAX and Flax."""

from jaxlm.config import Config, load_config
from jaxlm.errors import ConfigError, ConversionError, DataError, JaxlmError
from jaxlm.interop import from_pretrained, save_pretrained
from jaxlm.models import build_model, init_params

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "ConversionError",
    "DataError",
    "JaxlmError",
    "build_model",
    "from_pretrained",
    "init_params",
    "load_config",
    "save_pretrained",
]
