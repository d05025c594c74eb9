"""The family losses against NumPy cross-entropy on the same model outputs."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import load_config
from jaxlm.models import build_model, init_params
from jaxlm.train.losses import LOSSES

RNG = np.random.default_rng(0)
B, L = 3, 16


def _nll(logits, targets, weights):
    """Weighted summed negative log-likelihood and weight, in float64."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return -(picked * weights).sum(), weights.sum()


def _tokens(shape):
    return RNG.integers(4, 100, size=shape).astype(np.int32)


def _setup(family, extra=()):
    cfg = load_config(None, [*TINY_MODEL, f"model.family={family}", *extra]).model
    return cfg, build_model(cfg), nn.unbox(init_params(cfg, jax.random.key(0)))


def test_causal_lm_loss():
    cfg, model, params = _setup("gpt")
    batch = {"inputs": _tokens((B, L)), "targets": _tokens((B, L))}
    batch["weights"] = (RNG.random((B, L)) > 0.3).astype(np.float32)
    loss, stats = LOSSES["gpt"](model, params, batch, None, deterministic=True)
    nll, weight = _nll(
        model.apply({"params": params}, batch["inputs"]), batch["targets"], batch["weights"]
    )
    assert float(stats["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(loss) == pytest.approx(nll / weight, rel=1e-5)


def test_seq2seq_loss():
    cfg, model, params = _setup("seq2seq")
    batch = {
        "source": _tokens((B, L)),
        "target_inputs": _tokens((B, L)),
        "targets": _tokens((B, L)),
    }
    batch["weights"] = np.ones((B, L), np.float32)
    loss, _ = LOSSES["seq2seq"](model, params, batch, None, deterministic=True)
    logits = model.apply({"params": params}, batch["source"], batch["target_inputs"])
    nll, weight = _nll(logits, batch["targets"], batch["weights"])
    assert float(loss) == pytest.approx(nll / weight, rel=1e-5)


def test_bert_loss_sums_masked_lm_and_next_sentence_losses():
    cfg, model, params = _setup("bert", ["model.heads=[mlm,nsp]"])
    batch = {
        "inputs": _tokens((B, L)),
        "type_ids": np.repeat([[0] * (L // 2) + [1] * (L // 2)], B, 0).astype(np.int32),
        "mlm_targets": _tokens((B, L)),
        "mlm_weights": (RNG.random((B, L)) < 0.15).astype(np.float32),
        "nsp_labels": np.array([0, 1, 1], np.int32),
    }
    batch["mlm_weights"][:, 0] = 1.0  # at least one masked token per row
    loss, _ = LOSSES["bert"](model, params, batch, None, deterministic=True)
    out = model.apply({"params": params}, batch["inputs"], batch["type_ids"])
    mlm, mlm_weight = _nll(out["mlm_logits"], batch["mlm_targets"], batch["mlm_weights"])
    nsp, nsp_weight = _nll(out["nsp_logits"], batch["nsp_labels"], np.ones(B))
    assert float(loss) == pytest.approx(mlm / mlm_weight + nsp / nsp_weight, rel=1e-5)
