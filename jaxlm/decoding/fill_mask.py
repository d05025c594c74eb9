"""Fill-mask for BERT-style models: the most likely tokens at every masked position."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.models import build_model


@functools.lru_cache(maxsize=8)
def _predict(cfg: ModelConfig, top_k: int):
    model = build_model(cfg)

    def predict(params, tokens, segment_ids):
        logits = model.apply({"params": params}, tokens, segment_ids=segment_ids)["mlm_logits"]
        probs = jax.nn.softmax(logits, axis=-1)  # padded vocabulary rows have probability 0
        return jax.lax.top_k(probs, top_k)  # [batch, length, top_k] each

    return jax.jit(predict)


def fill_mask(
    cfg: ModelConfig,
    params: dict,
    tokens: np.ndarray,
    mask_id: int,
    *,
    segment_ids: np.ndarray | None = None,
    top_k: int = 5,
) -> list[list[tuple[int, list[tuple[int, float]]]]]:
    """For each row of tokens [batch, length] (0 in segment_ids = padding), a list of
    (position, [(token, probability), ...] best first) for every `mask_id` position."""
    if "mlm" not in cfg.heads:
        raise ValueError("fill-mask needs a masked-LM head: set model.heads to include mlm")
    tokens = np.asarray(tokens, np.int32)
    segment_ids = np.ones_like(tokens) if segment_ids is None else np.asarray(segment_ids)
    probs, ids = jax.device_get(_predict(cfg, top_k)(params, tokens, jnp.asarray(segment_ids)))
    results = []
    for row in range(tokens.shape[0]):
        masked = np.flatnonzero((tokens[row] == mask_id) & (segment_ids[row] != 0))
        results.append(
            [
                (
                    int(p),
                    [(int(t), float(q)) for t, q in zip(ids[row, p], probs[row, p], strict=True)],
                )
                for p in masked
            ]
        )
    return results
