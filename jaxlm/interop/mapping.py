"""Rules that map Hugging Face tensors to jaxlm parameters and back, and their application.

A rule pairs some HF tensor names with some jaxlm parameter paths ("/"-joined) and converts
either way; each conversion is the exact inverse of the other, so export then import gives the
parameters back bit for bit. Per-layer rules name HF tensors with "{i}" (the layer number) and
stack the layers of each jaxlm parameter along its leading `layers` axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.errors import ConversionError


class Transform(NamedTuple):
    """One array to one array: `forward` from the HF layout, `backward` into it."""

    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform(lambda a: a, lambda a: a)
TRANSPOSE = Transform(np.transpose, np.transpose)


def reshape(hf_shape: tuple[int, ...], shape: tuple[int, ...]) -> Transform:
    """Between the HF shape and the jaxlm shape (e.g. split heads into [heads, head_dim])."""
    return Transform(lambda a: a.reshape(shape), lambda a: a.reshape(hf_shape))


def scale(factor: float) -> Transform:
    """Multiplied by `factor` into jaxlm's layout, divided by it back: exact both ways when
    `factor` is a power of two, otherwise within a rounding."""
    return Transform(lambda a: a * np.float32(factor), lambda a: a / np.float32(factor))


def pad_vocab(vocab_size: int, padded_size: int, axis: int = 0) -> Transform:
    """The vocabulary axis padded with zeros to jaxlm's padded size; the padding dropped back."""

    def forward(a: np.ndarray) -> np.ndarray:
        if a.shape[axis] != vocab_size:
            raise ValueError(f"{a.shape[axis]} vocabulary entries, not {vocab_size}")
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, padded_size - a.shape[axis])
        return np.pad(a, widths)

    return Transform(forward, lambda a: np.take(a, np.arange(vocab_size), axis=axis))


def chain(*transforms: Transform) -> Transform:
    """Apply `transforms` in order from HF to jaxlm, in reverse order back."""

    def forward(a):
        for t in transforms:
            a = t.forward(a)
        return a

    def backward(a):
        for t in reversed(transforms):
            a = t.backward(a)
        return a

    return Transform(forward, backward)


@dataclass(frozen=True)
class Rule:
    """HF tensors `hf` <-> jaxlm parameters `jaxlm`.

    `to_jaxlm(*hf_arrays)` returns one array per jaxlm path; `to_hf(*jaxlm_arrays)` one per HF
    name. With `layers` > 0 the rule applies to each layer. An `optional` rule's tensors may be
    absent from a checkpoint: its parameters are then zeros.
    """

    hf: tuple[str, ...]
    jaxlm: tuple[str, ...]
    to_jaxlm: Callable[..., tuple[np.ndarray, ...]]
    to_hf: Callable[..., tuple[np.ndarray, ...]]
    layers: int = 0
    optional: bool = False

    def hf_names(self, layer: int | None = None) -> list[str]:
        """The HF names of one layer, or of all layers when `layer` is None."""
        if not self.layers:
            return list(self.hf)
        layers = range(self.layers) if layer is None else [layer]
        return [name.format(i=i) for i in layers for name in self.hf]

    def skipped(self, present: set[str]) -> bool:
        """An optional rule none of whose tensors are `present`."""
        return self.optional and not present.intersection(self.hf_names())


def tensor(
    hf: str, path: str, transform: Transform = IDENTITY, layers: int = 0, optional: bool = False
) -> Rule:
    """One HF tensor <-> one jaxlm parameter."""
    return Rule(
        (hf,),
        (path,),
        lambda a: (transform.forward(a),),
        lambda a: (transform.backward(a),),
        layers,
        optional,
    )


def linear(
    hf: str,
    path: str,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    bias: bool,
    layers: int = 0,
    optional: bool = False,
) -> list[Rule]:
    """A torch `nn.Linear` (`{hf}.weight` [out, in], `{hf}.bias` [out]) <-> a jaxlm dense layer
    (`{path}/kernel` [*in_shape, *out_shape], `{path}/bias` [*out_shape])."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    kernel = chain(TRANSPOSE, reshape((n_in, n_out), in_shape + out_shape))
    rules = [tensor(f"{hf}.weight", f"{path}/kernel", kernel, layers, optional)]
    if bias:
        rules.append(
            tensor(f"{hf}.bias", f"{path}/bias", reshape((n_out,), out_shape), layers, optional)
        )
    return rules


def block_projections(
    hf: dict[str, str], stack: str, cfg: ModelConfig, *, bias: bool = True, layers: int = 0
) -> list[Rule]:
    """A block's attention output projection and a plain MLP's two projections: the torch
    linears named `hf["out"]`, `hf["wi"]`, `hf["wo"]` <-> `{stack}self_attention/out`,
    `{stack}mlp/wi`, `{stack}mlp/wo`."""
    d, heads = cfg.embed_dim, (cfg.num_heads, cfg.resolved_head_dim)
    return [
        *linear(hf["out"], f"{stack}self_attention/out", heads, (d,), bias=bias, layers=layers),
        *linear(hf["wi"], f"{stack}mlp/wi", (d,), (cfg.mlp_dim,), bias=bias, layers=layers),
        *linear(hf["wo"], f"{stack}mlp/wo", (cfg.mlp_dim,), (d,), bias=bias, layers=layers),
    ]


def output_head(cfg: ModelConfig, hf: str = "lm_head.weight") -> Rule:
    """An untied output head: torch's [vocab, embed] <-> jaxlm's `lm_head/kernel` [embed,
    padded vocab]."""
    padded = pad_vocab(cfg.vocab_size, cfg.padded_vocab_size, axis=1)
    return tensor(hf, "lm_head/kernel", chain(TRANSPOSE, padded))


def fused_linear(
    hf: str, parts: list[tuple[str, tuple[int, ...]]], in_shape: tuple[int, ...], *, layers: int = 0
) -> Rule:
    """A torch `nn.Linear` without bias whose output features are those of several jaxlm dense
    layers in a row (Phi-3's `qkv_proj`, `gate_up_proj`): `{hf}.weight` [sum of outputs, in] <->
    `{path}/kernel` [*in_shape, *out_shape] for each (path, out_shape) of `parts`, in order."""
    n_in, sizes = math.prod(in_shape), [math.prod(shape) for _, shape in parts]

    def forward(weight: np.ndarray) -> tuple[np.ndarray, ...]:
        if weight.shape != (sum(sizes), n_in):
            raise ValueError(f"shape {weight.shape}, not {(sum(sizes), n_in)}")
        pieces = np.split(weight, np.cumsum(sizes)[:-1])
        return tuple(
            piece.T.reshape(in_shape + shape)
            for piece, (_, shape) in zip(pieces, parts, strict=True)
        )

    def backward(*kernels: np.ndarray) -> tuple[np.ndarray]:
        return (np.concatenate([kernel.reshape(n_in, -1).T for kernel in kernels]),)

    paths = tuple(f"{path}/kernel" for path, _ in parts)
    return Rule((f"{hf}.weight",), paths, forward, backward, layers)


def grouped_qkv_linear(
    hf: str,
    paths: tuple[str, str, str],
    in_dim: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    *,
    bias: bool = True,
    layers: int = 0,
) -> list[Rule]:
    """A torch `nn.Linear` whose output features run key/value group by group, each group its
    heads / kv_heads query heads, then its key and its value head (Falcon's `query_key_value`;
    GPT-NeoX's is the case of one query head a group, Falcon-7B's of one group): `{hf}.weight`
    and `{hf}.bias` <-> the query, key and value `paths`' `kernel` [in_dim, heads or kv_heads,
    head_dim] and `bias` [heads or kv_heads, head_dim]."""
    group = heads // kv_heads
    rows = kv_heads * (group + 2) * head_dim

    def split(array: np.ndarray, trailing: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        if array.shape != (rows, *trailing):
            raise ValueError(f"shape {array.shape}, not {(rows, *trailing)}")
        grouped = array.reshape(kv_heads, group + 2, head_dim, *trailing)
        query = grouped[:, :group].reshape(heads, head_dim, *trailing)
        return query, grouped[:, group], grouped[:, group + 1]

    def join(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
        query = query.reshape(kv_heads, group, *query.shape[1:])
        return np.concatenate([query, key[:, None], value[:, None]], axis=1).reshape(rows, -1)

    def kernels(weight: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(part.transpose(2, 0, 1) for part in split(weight, (in_dim,)))

    def weight(*kernels: np.ndarray) -> tuple[np.ndarray]:
        return (join(*(kernel.transpose(1, 2, 0) for kernel in kernels)),)

    def biases(bias: np.ndarray) -> tuple[np.ndarray, ...]:
        return split(bias, ())

    def joined_bias(*biases: np.ndarray) -> tuple[np.ndarray]:
        return (join(*(b[..., None] for b in biases)).reshape(-1),)

    rules = [Rule((f"{hf}.weight",), tuple(f"{p}/kernel" for p in paths), kernels, weight, layers)]
    if bias:
        names = tuple(f"{p}/bias" for p in paths)
        rules.append(Rule((f"{hf}.bias",), names, biases, joined_bias, layers))
    return rules


def stacked(hf: list[str], path: str, transform: Transform = IDENTITY, *, layers: int = 0) -> Rule:
    """HF tensors of one shape <-> one jaxlm parameter holding them, each through `transform`,
    in order along a new leading axis (StableLM's norms of each head's queries and keys, a
    mixture's experts)."""

    def forward(*arrays: np.ndarray) -> tuple[np.ndarray]:
        return (np.stack([transform.forward(a) for a in arrays]),)

    def backward(array: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(transform.backward(a) for a in array)

    return Rule(tuple(hf), (path,), forward, backward, layers)


def norm(hf: str, path: str, *, bias: bool = True, layers: int = 0) -> list[Rule]:
    """A LayerNorm (`weight`, `bias`) or RMSNorm (`weight`) <-> jaxlm's (`scale`, `bias`)."""
    rules = [tensor(f"{hf}.weight", f"{path}/scale", layers=layers)]
    if bias:
        rules.append(tensor(f"{hf}.bias", f"{path}/bias", layers=layers))
    return rules


def short_list(names: Iterable[str], limit: int = 6) -> str:
    """Sorted names joined by commas, at most `limit` of them, then how many in all."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _shapes(arrays) -> str:
    return ", ".join(str(tuple(a.shape)) for a in arrays)


def to_jaxlm(
    rules: list[Rule],
    read: Callable[[str], np.ndarray],
    present: set[str],
    shapes: dict[str, tuple[int, ...]],
    dtype,
) -> dict[str, np.ndarray]:
    """`{jaxlm path: array}` from HF tensors read by name, checked against the expected shapes.

    `present` are the checkpoint's tensor names: those of every rule not `skipped`.
    """
    params = {}
    for rule in rules:
        if rule.skipped(present):
            params.update({path: np.zeros(shapes[path], dtype) for path in rule.jaxlm})
            continue
        expected = [shapes[path][1:] if rule.layers else shapes[path] for path in rule.jaxlm]
        per_layer = []
        for layer in range(rule.layers) if rule.layers else [None]:
            names = rule.hf_names(layer)
            arrays = [read(name) for name in names]
            try:
                converted = rule.to_jaxlm(*arrays)
                fits = [value.shape for value in converted] == expected
            except ValueError:
                fits = False
            if not fits:
                wanted = ", ".join(f"{p} {s}" for p, s in zip(rule.jaxlm, expected, strict=True))
                raise ConversionError(
                    f"tensor {', '.join(names)} of shape {_shapes(arrays)} does not fit the "
                    f"parameter that config.json describes: {wanted}"
                )
            per_layer.append(converted)
        for j, path in enumerate(rule.jaxlm):
            values = [converted[j] for converted in per_layer]
            value = np.stack(values) if rule.layers else values[0]
            params[path] = value.astype(dtype, copy=False)
    return params


def to_hf(rules: list[Rule], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{HF name: array}` from `{jaxlm path: array}`."""
    tensors = {}
    for rule in rules:
        for layer in range(rule.layers) if rule.layers else [None]:
            arrays = [params[p] if layer is None else params[p][layer] for p in rule.jaxlm]
            converted = rule.to_hf(*arrays)
            tensors.update(zip(rule.hf_names(layer), converted, strict=True))
    return {name: np.ascontiguousarray(value) for name, value in tensors.items()}
