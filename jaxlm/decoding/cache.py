"""The generating families (GPT, encoder-decoder) as steps over a preallocated key/value cache.

A cache (`jaxlm.models.common.empty_cache`) holds each decoder layer's keys and values, one
[batch, kv_heads, length, head_dim] array per layer, the segment id of every slot and the next
free slot. The steps take parameters whose decoder layers are split out of their stack
(`unstack_layers`); a decoding loop splits them once, before it starts, and `generate` before
it calls the compiled loop.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxlm.config import ModelConfig
from jaxlm.models import build_model
from jaxlm.models.common import empty_cache

# (params, cache, tokens, positions, segments, context, prefill=False)
#     -> (logits [batch, length, vocab], cache)
StepFn = Callable[..., tuple[jax.Array, dict]]
BATCHED = ("key", "value", "segments")  # cache entries whose arrays lead with the batch axis


def step_fn(cfg: ModelConfig) -> StepFn:
    """Run new tokens [batch, length] through the model, appending them to the cache.

    `context` is None for GPT and `(encoded, source_segments)` for the encoder-decoder.
    `prefill` marks the call that starts the cache: a GPT's soft prompt goes in first.
    """
    model = build_model(cfg)

    def step(params, cache, tokens, positions, segments, context, prefill=False):
        params = unstack_layers(params)
        if cfg.family == "seq2seq":
            encoded, source_segments = context
            return model.apply(
                {"params": params},
                encoded,
                tokens,
                source_segments,
                segments,
                positions,
                cache=cache,
                method="decode",
            )
        return model.apply(
            {"params": params}, tokens, positions, segments, cache=cache, prefill=prefill
        )

    return step


def unstack_layers(params):
    """The parameters with the decoder's layer stack (a leading `layers` axis, from `nn.scan`)
    split into one entry per layer, `layers_0`, `layers_1`, ..., as decoding reads them;
    parameters already split come back as they are.

    The split copies the decoder layers' weights; on arrays (outside a trace) it runs one small
    compiled program per layer, so the decoding programs compile without it, and dropping the
    stacked parameters afterwards keeps one copy of the weights."""
    decoder = params.get("decoder", {})
    if "layers" not in decoder:
        return params
    stacked = decoder["layers"]
    count = jax.tree.leaves(stacked)[0].shape[0]
    layers = {f"layers_{i}": _layer(stacked, i) for i in range(count)}
    rest = {name: value for name, value in decoder.items() if name != "layers"}
    return {**params, "decoder": {**rest, **layers}}


@jax.jit
def _layer(stacked, index):
    """Layer `index` of a stack: one program for every layer (the index is an argument)."""
    return jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, index, keepdims=False), stacked)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
    """An empty cache for `batch` sequences of up to `length` tokens."""
    layers = cfg.decoder_layers if cfg.family == "seq2seq" else cfg.num_layers
    return empty_cache(cfg, layers, batch, length)


def soft_prompt_length(params) -> int:
    """The cache slots a GPT's soft prompt (prompt tuning) takes: its rows, or 0 without one."""
    return params["prompt"].shape[0] if "prompt" in params else 0


def encode(cfg: ModelConfig, params, source: jax.Array, source_segments: jax.Array):
    """Encoder-decoder: the context every decoding step attends to."""
    encoded = build_model(cfg).apply({"params": params}, source, source_segments, method="encode")
    return encoded, source_segments


def map_batch(cache: dict, fn: Callable[[jax.Array], jax.Array]) -> dict:
    """Apply `fn` to every array of the batched cache entries, rows first (beam search reorders
    rows)."""
    return {k: jax.tree.map(fn, v) if k in BATCHED else v for k, v in cache.items()}
