"""What `cfg.finetune` changes about training: the initial parameters (pretrained ones plus the
mode's adapter), which of them train, and the parameters the model is applied to.

| mode    | adds to the parameters                 | trains                                     |
|---------|----------------------------------------|--------------------------------------------|
| full    | -                                      | everything                                 |
| partial | -                                      | what `finetune.trainable` matches          |
| prompt  | `prompt` [prompt_length, embed]        | the prompt, and what `trainable` matches   |
| prefix  | `<stack>/layers/prefix_{key,value}`    | the prefixes, and what `trainable` matches |
| lora    | `lora/<kernel's module>/{a,b}`         | the factors, and what `trainable` matches  |

Frozen parameters get no gradient, no optimizer state and no update (`freezing`); a pattern
with a range of layers (`decoder/layers[8:]`) trains those layers of a stack and freezes the
others, whose rows of the stack's arrays get no gradient and no update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import optax

from jaxlm.config import Config, validate
from jaxlm.finetune import lora
from jaxlm.finetune.freezing import frozen_loss, only_trainable
from jaxlm.finetune.patterns import SEP, flat, layer_counts, nested, select_layers
from jaxlm.finetune.prefix import init_prefix
from jaxlm.finetune.pretrained import fill, load_pretrained, resolve_model
from jaxlm.finetune.prompt import PROMPT, init_prompt
from jaxlm.models import init_params
from jaxlm.models.summary import abstract_params


@dataclasses.dataclass(frozen=True)
class Finetuning:
    """A prepared fine-tuning run (see the module doc); `prepare` builds one."""

    cfg: Config  # the run's config, its model section resolved against `finetune.init_from`
    trainable: frozenset[str]  # paths of the parameters that train
    # of those, the ones that train in some layers of their stack only: which layers
    trained_layers: dict[str, tuple[bool, ...]] = dataclasses.field(default_factory=dict)

    def model_params(self, params: dict) -> dict:
        """The parameters as the model takes them: LoRA updates merged into their kernels."""
        return model_params(self.cfg, params)

    def model_layout(self, tree: dict) -> dict:
        """`tree` (shaped like the parameters, e.g. their shardings) without the LoRA factors,
        as `model_params` are."""
        return {key: value for key, value in tree.items() if key != lora.LORA}

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """`tx` over the trainable parameters alone."""
        return only_trainable(tx, self.trainable, self.trained_layers)

    def loss(self, loss_fn: Callable) -> Callable:
        """`loss_fn` on `model_params`, its gradient reaching only the trainable parameters."""
        return frozen_loss(loss_fn, self.trainable, self.model_params, self.trained_layers)

    def counts(self, params: dict) -> tuple[int, int]:
        """(trainable, all) counts of the elements of `params`."""
        sizes = {path: math.prod(leaf.shape) for path, leaf in flat(params).items()}
        trained = {
            path: sizes[path] * sum(layers) // len(layers)
            for path, layers in self.trained_layers.items()
        }
        return sum(trained.get(path, sizes[path]) for path in self.trainable), sum(sizes.values())


def model_params(cfg: Config, params: dict) -> dict:
    """The parameters of a run of `cfg` (as trained and checkpointed) as the model takes them:
    LoRA updates merged into their kernels; a soft prompt or prefix stays, the model reads it."""
    return lora.merge(params, lora.scaling(cfg.finetune))


def _lora_targets(
    cfg: Config, stacks: dict[str, int | None]
) -> tuple[set[str], dict[str, tuple[bool, ...]]]:
    """(the kernels that get LoRA factors, none outside mode lora; the layers that train of the
    factors of a stacked kernel that `finetune.lora_targets` takes some layers of). The factors
    of its other layers stay as initialised: B zero, no update."""
    if cfg.finetune.mode != "lora":
        return set(), {}
    kernels = {path: count for path, count in stacks.items() if path.endswith(f"{SEP}kernel")}
    targets, layers = select_layers(kernels, cfg.finetune.lora_targets, "finetune.lora_targets")
    factors = {
        f"{lora.LORA}{SEP}{kernel.rsplit(SEP, 1)[0]}{SEP}{factor}": rows
        for kernel, rows in layers.items()
        for factor in ("a", "b")
    }
    return targets, factors


def _adapter(cfg: Config, boxed: dict, lora_targets: set[str], rng: jax.Array) -> dict:
    """The boxed parameters the mode adds (see the module doc)."""
    f, leaves = cfg.finetune, flat(boxed)
    if f.mode == "prompt":
        table = leaves[f"token_embed{SEP}embedding"].value
        return {PROMPT: init_prompt(table, cfg.model.vocab_size, f.prompt_length, rng)}
    if f.mode == "prefix":
        return init_prefix(cfg.model, f.prefix_length, rng)
    if f.mode == "lora":
        kernels = {path: leaves[path] for path in lora_targets}
        return {lora.LORA: lora.init_lora(kernels, f.lora_rank, rng)}
    return {}


def checkpointed_params(cfg: Config) -> dict:
    """Shapes, dtypes and logical axes of the parameters a run of `cfg` trains and checkpoints
    (its model's, and the adapter of its mode), computed without allocating or reading any."""
    lora_targets, _ = _lora_targets(cfg, layer_counts(abstract_params(cfg.model)))
    rng = jax.random.key(cfg.train.seed)

    def boxed():
        params = init_params(cfg.model, rng)
        return nested(flat(params) | flat(_adapter(cfg, params, lora_targets, rng)))

    return jax.eval_shape(boxed)


def prepare(cfg: Config, log=print) -> tuple[Finetuning, dict] | None:
    """(the fine-tuning `cfg.finetune` asks for, the initial parameters boxed with their logical
    axes); None for a full run from a random init."""
    f = cfg.finetune
    if f.mode == "full" and not f.init_from:
        return None
    rng = jax.random.key(cfg.train.seed)
    if f.init_from:
        pretrained_model, pretrained = load_pretrained(f.init_from)
        cfg = dataclasses.replace(cfg, model=resolve_model(cfg.model, pretrained_model))
        validate(cfg)
    stacks = layer_counts(abstract_params(cfg.model))  # checked before anything is allocated
    model_paths = set(stacks)
    chosen, trained_layers = select_layers(stacks, f.trainable, "finetune.trainable")
    lora_targets, lora_layers = _lora_targets(cfg, stacks)
    boxed = init_params(cfg.model, rng)
    if f.init_from:
        boxed = fill(boxed, pretrained, log)
    adapter = flat(_adapter(cfg, boxed, lora_targets, jax.random.fold_in(rng, 1)))
    params = nested(flat(boxed) | adapter)
    trainable = model_paths if f.mode == "full" else chosen | set(adapter)
    finetuning = Finetuning(cfg, frozenset(trainable), trained_layers | lora_layers)
    count, total = finetuning.counts(nn.unbox(params))
    log(f"finetune {f.mode}: {count:,} of {total:,} parameters train ({count / total:.2%})")
    return finetuning, params
