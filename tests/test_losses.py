"""The family losses against NumPy cross-entropy on the same model outputs, plain and with
label smoothing and a z-loss."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import load_config
from jaxlm.models import build_model, init_params
from jaxlm.train.losses import LOSSES, token_loss, training_loss

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


def _smoothed(logits, targets, weights, num_classes, smoothing, z_loss):
    """Weighted mean of the cross-entropy against (1 - e) one-hot + e / num_classes over the
    first num_classes logits, plus z_loss * logsumexp^2, in float64."""
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    logp = logits[..., :num_classes] - log_z[..., None]
    q = np.full(logp.shape, smoothing / num_classes)
    np.put_along_axis(q, targets[..., None], 1 - smoothing + smoothing / num_classes, -1)
    per_token = -(q * logp).sum(-1) + z_loss * log_z**2
    return (per_token * weights).sum() / weights.sum()


def _padded_logits(shape, real):
    """Random logits whose columns from `real` on are a padded vocabulary's masked rows."""
    logits = RNG.normal(size=shape).astype(np.float32) * 3
    logits[..., real:] = np.finfo(np.float32).min
    return logits


@pytest.mark.parametrize("smoothing, z_loss", [(0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)])
def test_token_loss_smooths_over_the_real_classes_and_adds_the_z_loss(smoothing, z_loss):
    logits, targets = _padded_logits((B, L, 128), 100), _tokens((B, L))
    weights = (RNG.random((B, L)) > 0.3).astype(np.float32)
    loss, stats = token_loss(logits, targets, weights, 100, smoothing, z_loss)
    want = _smoothed(logits, targets, weights, 100, smoothing, z_loss)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    nll, weight = _nll(logits, targets, weights)  # the statistics stay the plain likelihood
    assert (float(stats["nll"]), float(stats["weights"])) == pytest.approx((nll, weight), rel=1e-5)


def test_label_smoothing_matches_pytorch_cross_entropy():
    torch = pytest.importorskip("torch", reason="the reference cross-entropy needs PyTorch")
    logits, targets = _padded_logits((B * L, 100), 100), _tokens((B * L,))
    loss, _ = token_loss(logits, targets, np.ones(B * L, np.float32), label_smoothing=0.1)
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).double(), torch.from_numpy(targets).long(), label_smoothing=0.1
    )
    assert float(loss) == pytest.approx(want.item(), rel=1e-5)


def test_the_regularised_loss_is_minimised_by_the_smoothed_distribution():
    """Its gradient vanishes where softmax = (1 - e) one-hot + e / classes on the real classes
    (none on the padding) and the normaliser Z is 1, and only there."""
    smoothing, real = 0.1, 100
    targets = _tokens((B,))
    q = np.full((B, real), smoothing / real)
    np.put_along_axis(q, targets[:, None], 1 - smoothing + smoothing / real, -1)
    optimum = np.concatenate([np.log(q), np.full((B, 28), -1e30)], -1).astype(np.float32)

    def loss(logits):
        return token_loss(logits, targets, np.ones(B, np.float32), real, smoothing, 1e-2)[0]

    assert np.abs(jax.grad(loss)(optimum)).max() < 1e-6
    assert np.abs(jax.grad(loss)(optimum + 1.0)).max() > 1e-3  # Z = e: the z-loss pulls
    unsmoothed = optimum.copy()
    np.put_along_axis(unsmoothed, targets[:, None], 5.0, -1)
    assert np.abs(jax.grad(loss)(unsmoothed)).max() > 1e-3


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_family_losses_smooth_over_the_vocabulary_not_its_padding(family):
    """The model pads its 100-token vocabulary to 128 logits; smoothing spreads over 100."""
    cfg, model, params = _setup(family, ["model.heads=[mlm]"])
    inputs, targets = _tokens((B, L)), _tokens((B, L))
    weights = (RNG.random((B, L)) > 0.3).astype(np.float32)
    if family == "gpt":
        batch = {"inputs": inputs, "targets": targets, "weights": weights}
        logits = model.apply({"params": params}, inputs)
    else:
        batch = {"inputs": inputs, "mlm_targets": targets, "mlm_weights": weights}
        logits = model.apply({"params": params}, inputs)["mlm_logits"]
    assert logits.shape[-1] == 128
    loss, stats = LOSSES[family](
        model, params, batch, None, deterministic=True, label_smoothing=0.1, z_loss=1e-3
    )
    assert float(loss) == pytest.approx(_smoothed(logits, targets, weights, 100, 0.1, 1e-3))
    assert float(stats["nll"]) == pytest.approx(_nll(logits, targets, weights)[0], rel=1e-5)


def test_training_loss_takes_the_regularisers_from_the_config():
    cfg = load_config(None, [*TINY_MODEL, "train.label_smoothing=0.1", "train.z_loss=1e-4"])
    bound = training_loss(cfg)
    assert bound.func is LOSSES["gpt"]
    assert bound.keywords == {"label_smoothing": 0.1, "z_loss": 1e-4}
