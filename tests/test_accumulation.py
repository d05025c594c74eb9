"""Gradient accumulation: a step over microbatches is the full-batch step, on any mesh."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.finetune.freezing import frozen_loss
from jaxlm.finetune.patterns import flat
from jaxlm.models import init_params
from jaxlm.parallel import activate, make_mesh, shard_batch
from jaxlm.train.losses import training_loss
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state
from jaxlm.train.step import compile_train_step, split_microbatches

BATCH, MICRO = 16, 4
TINY = TINY_MODEL + [
    "model.vocab_multiple=8",
    f"data.batch_size={BATCH}",
    "optim.warmup_steps=0",
    "optim.learning_rate=1e-3",
    "optim.b1=0.5",
    "optim.grad_clip=0",  # after the first step Adam's first moment is (1 - b1) * gradients
]


def _batch(length=16, vocab=100):
    """Rows with very different numbers of weighted targets, so that the mean over the batch's
    tokens differs from the mean of the microbatches' means."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, vocab, size=(BATCH, length + 1)).astype(np.int32)
    weights = (np.arange(length)[None] < 1 + np.arange(BATCH)[:, None]).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def _config(microbatches, mesh=(1, 1, 1), unroll=1, extra=()):
    data, fsdp, tensor = mesh
    overrides = [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]
    accumulation = [f"train.microbatches={microbatches}", f"train.microbatch_unroll={unroll}"]
    return load_config(None, TINY + overrides + accumulation + list(extra))


def _compiled_step(cfg, devices, loss_fn=None):
    mesh = make_mesh(cfg.mesh, devices)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = init_state(cfg.model, tx, mesh, seed=0)
    return compile_train_step(cfg, tx, schedule, shardings, mesh, loss_fn), state, mesh


def _step(microbatches, devices, mesh=(1, 1, 1), unroll=1, extra=()):
    train_step, state, mesh = _compiled_step(_config(microbatches, mesh, unroll, extra), devices)
    with activate(mesh):
        state, metrics = train_step(state, shard_batch(_batch(), mesh))
    grads = jax.tree.map(lambda mu: mu / 0.5, state.opt_state[0].mu)  # adamw = chain(adam, ...)
    return jax.device_get((state.params, grads, metrics))


@pytest.fixture(scope="module")
def full_batch():
    return _step(1, jax.devices()[:1])


@pytest.mark.parametrize(
    "mesh, unroll",
    [((1, 1, 1), 1), ((2, 2, 2), 1), ((1, 1, 1), 0), ((2, 2, 2), 2)],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"unroll{v}",
)
def test_accumulated_step_equals_full_batch_step(full_batch, mesh, unroll):
    devices = jax.devices()[: int(np.prod(mesh))]
    params, grads, metrics = _step(MICRO, devices, mesh, unroll)
    ref_params, ref_grads, ref_metrics = full_batch
    for key in ("loss", "grad_norm", "accuracy", "tokens"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-5)
    assert metrics["tokens"] == _batch()["weights"].sum()
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_accumulation_keeps_label_smoothing_and_the_z_loss():
    """The loss accumulated is the regularised one, whose mean is no longer the NLL's."""
    regularised = ["train.label_smoothing=0.1", "train.z_loss=0.01"]
    params, grads, metrics = _step(MICRO, jax.devices()[:1], extra=regularised)
    ref_params, ref_grads, ref_metrics = _step(1, jax.devices()[:1], extra=regularised)
    plain = _step(1, jax.devices()[:1])[2]
    for key in ("loss", "nll", "grad_norm"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], plain["loss"], rtol=1e-6)
    assert metrics["loss"] > metrics["nll"] + 0.05
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@functools.cache
def _loops(microbatches, unroll=1) -> int:
    """While loops in the step's program (the tiny model's layers are one)."""
    train_step, state, mesh = _compiled_step(
        _config(microbatches, unroll=unroll), jax.devices()[:1]
    )
    with activate(mesh):
        return train_step.lower(state, shard_batch(_batch(), mesh)).as_text("hlo").count(" while(")


@pytest.mark.parametrize("unroll, loops", [(1, 1), (2, 1), (0, 0), (MICRO, 0)])
def test_unrolled_microbatches_leave_no_loop(unroll, loops):
    """unroll = k: k microbatches per loop iteration; all of them (0 or MICRO): no loop."""
    assert _loops(MICRO, unroll) - _loops(1) == loops


def test_accumulation_is_not_a_mean_of_microbatch_means():
    """The test batch tells a per-token mean from a mean of per-microbatch means."""
    weights = split_microbatches(_batch(), MICRO)["weights"]
    per_micro = weights.reshape(MICRO, -1).sum(1)
    assert len(set(per_micro.tolist())) == MICRO


def test_microbatches_stay_spread_over_the_batch_devices():
    cfg = load_config(None, TINY + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    mesh = make_mesh(cfg.mesh)
    batch = _batch()
    with activate(mesh):
        parts = jax.jit(lambda b: split_microbatches(b, MICRO))(shard_batch(batch, mesh))
    for key, value in batch.items():
        for j in range(MICRO):  # microbatch j: rows j, j + MICRO, ...
            np.testing.assert_array_equal(parts[key][j], value[j::MICRO])
        assert tuple(parts[key].sharding.spec)[:2] == (None, ("data", "fsdp"))


def test_microbatches_must_divide_the_batch():
    with pytest.raises(ConfigError, match="train.microbatches.*does not divide"):
        load_config(None, TINY + ["train.microbatches=3"])
    with pytest.raises(ConfigError, match="train.microbatches.*positive"):
        load_config(None, TINY + ["train.microbatches=0"])
    with pytest.raises(ConfigError, match="train.microbatch_unroll.*>= 0"):
        load_config(None, TINY + ["train.microbatch_unroll=-1"])


def test_microbatches_must_split_over_the_batch_devices():
    # 16 rows / 8 microbatches = 2 rows, but data * fsdp = 4 devices.
    with pytest.raises(ConfigError, match="train.microbatches.*data\\*fsdp = 4"):
        _step(8, jax.devices(), (2, 2, 2))


def _bert_batch(length=16, vocab=100):
    """Masked positions and next-sentence labels spread very unevenly over the rows."""
    rng = np.random.default_rng(1)
    inputs = rng.integers(4, vocab, size=(BATCH, length)).astype(np.int32)
    masked = np.arange(length)[None] < 1 + np.arange(BATCH)[:, None] % 7
    return {
        "inputs": inputs,
        "type_ids": np.zeros((BATCH, length), np.int32),
        "mlm_targets": rng.integers(4, vocab, size=(BATCH, length)).astype(np.int32),
        "mlm_weights": masked.astype(np.float32),
        "nsp_labels": rng.integers(0, 2, size=BATCH).astype(np.int32),
        "nsp_weights": (np.arange(BATCH) % 3 > 0).astype(np.float32),
    }


def _bert_step(microbatches, mesh, frozen=False):
    """One step; `frozen`: through the fine-tuning wrapper, with the embeddings frozen."""
    bert = ["model.family=bert", "model.heads=[mlm,nsp]", "train.label_smoothing=0.1"]
    cfg = _config(microbatches, mesh, extra=bert)
    loss_fn = None
    if frozen:
        paths = flat(nn.unbox(init_params(cfg.model, jax.random.key(0))))
        trainable = {path for path in paths if "embed" not in path}
        loss_fn = frozen_loss(training_loss(cfg), trainable, lambda params: params)
    devices = jax.devices()[: int(np.prod(mesh))]
    train_step, state, mesh = _compiled_step(cfg, devices, loss_fn)
    with activate(mesh):
        state, metrics = train_step(state, shard_batch(_bert_batch(), mesh))
    return jax.device_get((state.opt_state[0].mu, metrics))


@pytest.mark.parametrize(
    "mesh, frozen", [((1, 1, 1), False), ((2, 2, 2), False), ((1, 1, 1), True)]
)
def test_bert_masked_lm_and_next_sentence_accumulate_to_the_full_batch_step(mesh, frozen):
    """Each head is divided by its weight in the whole batch, not in each microbatch."""
    moments, metrics = _bert_step(MICRO, mesh, frozen)
    ref_moments, ref_metrics = _bert_step(1, (1, 1, 1), frozen)
    for key in ("loss", "grad_norm", "tokens"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(moments), jax.tree.leaves(ref_moments), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
