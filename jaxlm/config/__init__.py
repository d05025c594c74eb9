"""Typed configs: dataclasses loaded from YAML (a preset name or a path) with dotted overrides.

    cfg = load_config("gpt2-small", ["model.num_layers=4", "train.steps=100"])

An unknown key, a wrong type or an invalid value raises `ConfigError` naming the key.
"""

from jaxlm.config.loading import PRESET_DIR, load_config, preset_names, to_yaml
from jaxlm.config.schema import (
    DTYPES,
    Config,
    DataConfig,
    DistributedConfig,
    FinetuneConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
)
from jaxlm.config.validation import (
    BERT_HEADS,
    CHOICES,
    TASK_MODELS,
    check_task,
    validate,
    validate_sample,
)

__all__ = [
    "BERT_HEADS",
    "CHOICES",
    "DTYPES",
    "PRESET_DIR",
    "TASK_MODELS",
    "Config",
    "DataConfig",
    "DistributedConfig",
    "FinetuneConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "SampleConfig",
    "TrainConfig",
    "check_task",
    "load_config",
    "preset_names",
    "to_yaml",
    "validate",
    "validate_sample",
]
