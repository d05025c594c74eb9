"""jaxlm: pretrain, fine-tune, evaluate and sample Transformer language models with JAX and Flax.

    import jaxlm

    cfg = jaxlm.load_config("demo", ["train.steps=100"])
    trainer = jaxlm.Trainer(cfg)                       # data, tokenizer, state on the mesh
    trainer.fit()
    print(trainer.generate(["ROMEO."]))

The names below are the public API; the CLI is a thin layer over them. Submodules load on first
use, so `import jaxlm` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # configs
    "Config": "jaxlm.config",
    "ModelConfig": "jaxlm.config",
    "SampleConfig": "jaxlm.config",
    "load_config": "jaxlm.config",
    # models
    "build_model": "jaxlm.models",
    "init_params": "jaxlm.models",
    "count_parameters": "jaxlm.models.summary",
    "parameter_table": "jaxlm.models.summary",
    # data
    "Tokenizer": "jaxlm.data.tokenizer",
    "training_data": "jaxlm.data.loader",
    "data_from_examples": "jaxlm.data.loader",
    # training
    "Trainer": "jaxlm.train.trainer",
    "Callback": "jaxlm.train.callbacks",
    "EarlyStopping": "jaxlm.train.callbacks",
    "make_mesh": "jaxlm.parallel",
    "plot_loss": "jaxlm.train.plot",
    "read_metrics": "jaxlm.train.metrics_log",
    # checkpoints, pretrained weights, inference
    "Checkpointer": "jaxlm.checkpoint",
    "load_for_inference": "jaxlm.inference",
    "classify_texts": "jaxlm.inference",
    "translation_bleu": "jaxlm.translation_eval",
    "from_pretrained": "jaxlm.interop",
    "save_pretrained": "jaxlm.interop",
    "generate_text": "jaxlm.generate",
    "ConversationCache": "jaxlm.decoding.conversation",
    # errors
    "JaxlmError": "jaxlm.errors",
    "ConfigError": "jaxlm.errors",
    "DataError": "jaxlm.errors",
    "ConversionError": "jaxlm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
