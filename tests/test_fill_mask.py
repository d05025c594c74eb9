"""Fill-mask: top-k tokens and probabilities at every mask against NumPy softmax of the logits."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import load_config
from jaxlm.decoding.fill_mask import fill_mask
from jaxlm.models import build_model, init_params

MASK = 3
CFG = load_config(None, [*TINY_MODEL, "model.family=bert", "model.heads=[mlm]"]).model
PARAMS = nn.unbox(init_params(CFG, jax.random.key(0)))


def test_top_k_at_each_mask_matches_softmax_of_mlm_logits():
    tokens = np.array([[5, MASK, 7, 8, MASK, 9], [5, 6, MASK, 0, 0, 0]], np.int32)
    segments = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], np.int32)
    got = fill_mask(CFG, PARAMS, tokens, MASK, segment_ids=segments, top_k=4)

    logits = build_model(CFG).apply({"params": PARAMS}, tokens, segment_ids=segments)["mlm_logits"]
    logits = np.asarray(logits, np.float64)[..., : CFG.vocab_size]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert [[p for p, _ in row] for row in got] == [[1, 4], [2]]
    for row, masks in enumerate(got):
        for position, candidates in masks:
            want = np.argsort(-probs[row, position])[:4]
            assert [t for t, _ in candidates] == want.tolist()
            np.testing.assert_allclose(
                [p for _, p in candidates], probs[row, position][want], rtol=1e-5
            )


def test_fill_mask_needs_the_mlm_head():
    cfg = load_config(None, [*TINY_MODEL, "model.family=bert"]).model
    with pytest.raises(ValueError, match="masked-LM head"):
        fill_mask(cfg, {}, np.zeros((1, 4), np.int32), MASK)
