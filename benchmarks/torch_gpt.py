"""The PyTorch reference GPT for the scripts in this folder; it lives in `jaxlm.bench.torch_gpt`
(importable by `jaxlm bench`)."""

from jaxlm.bench.torch_gpt import (  # noqa: F401
    GPTConfig,
    KVCache,
    TorchGPT,
    TorchTrainer,
    generate,
    load_jaxlm_params,
)
