"""Fine-tuning: start from pretrained weights (`finetune.init_from`) and train all of them,
some of them (partial), or a small adapter with the rest frozen (prompt, prefix, LoRA).

    finetuning, params = prepare(cfg)     # None for a plain run from a random init
    # what `Trainer` does with them: trains `finetuning.cfg` from `params` with
    # `finetuning.optimizer(tx)` and `finetuning.loss(loss_fn)`, evaluates `model_params`
    abstract = checkpointed_params(cfg)   # what its checkpoints hold (`load_for_inference`)

One concern per module: `patterns` (parameters by path), `pretrained` (init_from), `freezing`
(no gradient, optimizer state or update for frozen parameters), `prompt`, `prefix`, `lora` (the
adapters), `modes` (what each mode adds and trains).
"""

from jaxlm.finetune.lora import merge as merge_lora
from jaxlm.finetune.modes import Finetuning, checkpointed_params, model_params, prepare

__all__ = ["Finetuning", "checkpointed_params", "merge_lora", "model_params", "prepare"]
