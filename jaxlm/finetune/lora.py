"""LoRA (Hu et al. 2021): a kernel W is used as W + (alpha / rank) · A·B, with W frozen.

The factors live in the parameter tree under `lora/<kernel's module path>/{a,b}`, so the
models stay as they are: `merge` folds them into the kernels before `model.apply`, inside the
loss while training (gradients reach A and B through it) and once for evaluation and export.

A kernel's leading `layers` axis (a scanned stack) is kept: each layer gets its own factors.
The rest splits into input and output dimensions, the attention output projection reading two
(heads, head_dim) and every other kernel one; A is [..., inputs, rank] with small random values
and B is [..., rank, outputs] of zeros, so that training starts from the base model exactly.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import FinetuneConfig
from jaxlm.finetune.patterns import SEP, flat, nested

LORA = "lora"


def scaling(f: FinetuneConfig) -> float:
    """alpha / rank, the factor of A·B."""
    return f.lora_alpha / f.lora_rank


def _split(names: tuple) -> tuple[int, int]:
    """(leading layer axes, input axes) of a kernel with logical axis `names`."""
    lead = 1 if names and names[0] == "layers" else 0
    return lead, 2 if names[lead] == "heads" else 1


def init_lora(kernels: dict[str, nn.LogicallyPartitioned], rank: int, rng: jax.Array) -> dict:
    """Boxed factors `{module path: {"a", "b"}}` for boxed `{kernel path: kernel}`."""
    factors = {}
    for index, (path, kernel) in enumerate(sorted(kernels.items())):
        lead, n_in = _split(kernel.names)
        shape, names = kernel.value.shape, kernel.names
        inputs, outputs = shape[lead : lead + n_in], shape[lead + n_in :]
        std = math.prod(inputs) ** -0.5
        a = std * jax.random.normal(jax.random.fold_in(rng, index), (*shape[:lead], *inputs, rank))
        b = jnp.zeros((*shape[:lead], rank, *outputs))
        module = path.rsplit(SEP, 1)[0]
        factors[f"{module}{SEP}a"] = nn.LogicallyPartitioned(
            a.astype(kernel.value.dtype), (*names[: lead + n_in], None)
        )
        factors[f"{module}{SEP}b"] = nn.LogicallyPartitioned(
            b.astype(kernel.value.dtype), (*names[:lead], None, *names[lead + n_in :])
        )
    return nested(factors)


def delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...], scale: float) -> jax.Array:
    """scale · A·B in the kernel's shape, in float32. a: [*lead, *inputs, rank]; b: [*lead, rank,
    *outputs]; the kernel: [*lead, *inputs, *outputs]."""
    rank, lead = a.shape[-1], a.ndim + b.ndim - 2 - len(kernel_shape)
    a2 = a.reshape(*a.shape[:lead], -1, rank).astype(jnp.float32)
    b2 = b.reshape(*b.shape[:lead], rank, -1).astype(jnp.float32)
    return (scale * (a2 @ b2)).reshape(kernel_shape)


def merge(params: dict, scale: float) -> dict:
    """The parameters with every LoRA update folded into its kernel, and no `lora` subtree."""
    if LORA not in params:
        return params
    leaves = flat({k: v for k, v in params.items() if k != LORA})
    factors = flat(params[LORA])
    for module in {path.rsplit(SEP, 1)[0] for path in factors}:
        kernel = leaves[f"{module}{SEP}kernel"]
        a, b = factors[f"{module}{SEP}a"], factors[f"{module}{SEP}b"]
        update = delta(a, b, kernel.shape, scale)
        leaves[f"{module}{SEP}kernel"] = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
    return nested(leaves)
