"""The language model of Gemma 3's multimodal checkpoints (`Gemma3ForConditionalGeneration`,
model type `gemma3`: Gemma 3 4B, 12B, 27B) -> jaxlm's GPT as a Gemma 3 text model's (see
`gemma3.py`), from `text_config`. Import only: the vision tower and its projector are left out,
so the model reads and writes text alone (and exports as `Gemma3ForCausalLM`).

Its tensors are named `language_model.model.*` (as the released checkpoints are and
transformers saves them) or `model.language_model.*` (transformers' names in memory).
"""

from __future__ import annotations

import dataclasses
import re

from jaxlm.config import ModelConfig
from jaxlm.interop import gemma3
from jaxlm.interop.mapping import Rule

MODEL_TYPE = "gemma3"
ARCHITECTURES = ("Gemma3ForConditionalGeneration",)
IGNORED = re.compile(
    r"^(model\.)?(vision_tower|multi_modal_projector)\.|^(language_model\.)?lm_head\.weight$"
)
CURRENT, RELEASED = "model.language_model.", "language_model.model."


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
    return gemma3.config_from_hf(hf.get("text_config") or {}, names)


def rules(cfg: ModelConfig, names: set[str] | None = None, hf: dict | None = None) -> list[Rule]:
    """Gemma 3's text rules, their `model.` names under the prefix the checkpoint uses."""
    released = any(name.startswith(RELEASED) for name in names or ())
    prefix = RELEASED if released else CURRENT

    def renamed(name: str) -> str:
        if name.startswith("model."):
            return prefix + name.removeprefix("model.")
        return f"language_model.{name}" if released else name  # the head, when untied

    return [
        dataclasses.replace(rule, hf=tuple(renamed(name) for name in rule.hf))
        for rule in gemma3.rules(cfg, names, hf)
    ]
