"""Pure loss functions for the three model families, returning summed statistics.

Each takes `(model, params, batch, rngs, deterministic)` and returns `(loss, stats)`: the loss
to differentiate (mean over weighted targets) and float32 sums (`nll`, `weights`, `correct`)
that add up across batches, so that eval perplexity is exp(sum nll / sum weights).

Keyword arguments `label_smoothing` and `z_loss` add to the loss to differentiate (see
`token_loss`), never to the statistics: `nll` stays the plain negative log-likelihood.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxlm.layers.moe import ROUTER_LOGITS


def predicts_target(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """argmax(logits, -1) == targets (the first maximum wins ties), computed as "the target's
    logit is the maximum and no earlier one reaches it": XLA's CPU argmax (a two-operand
    reduction) is several times slower than these one-operand ones. The tie test is a boolean
    `any`, whose operand XLA:CPU writes with one byte per logit (a float sum: four)."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    at_target = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    earlier = jnp.arange(logits.shape[-1]) < targets[..., None]
    tie_before = jnp.any((logits == best) & earlier, axis=-1)
    return (at_target[..., 0] == best[..., 0]) & ~tie_before


def token_statistics(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict:
    """Summed negative log-likelihood, weight and correct predictions over weighted tokens."""
    return _summed(logits, targets, weights, _token_nll(logits, targets))


def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _summed(logits, targets, weights, nll) -> dict:
    """`token_statistics` from each token's negative log-likelihood `nll`."""
    weights = weights.astype(jnp.float32)
    correct = predicts_target(logits, targets).astype(jnp.float32)
    return {
        "nll": jnp.sum(nll * weights),
        "weights": jnp.sum(weights),
        "correct": jnp.sum(correct * weights),
    }


def token_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    normalizer: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """(loss, `token_statistics`): the loss is the mean over weighted tokens (a sum divided by
    their weight, or by `normalizer` when given) of the cross-entropy against labels smoothed
    uniformly over the first `num_classes` logits (the real ones, default all: a padded
    vocabulary's extra rows are left out),
    (1 - e) * nll + e * mean_c(-log p_c) = nll + e * (target logit - mean_c logit_c),
    plus `z_loss` * log(Z)^2, which holds the softmax normaliser Z near 1 (PaLM)."""
    nll = _token_nll(logits, targets)
    stats = _summed(logits, targets, weights, nll)
    weights, logits = weights.astype(jnp.float32), logits.astype(jnp.float32)
    total = stats["nll"]
    if label_smoothing or z_loss:
        target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        mean_logit = jnp.mean(logits[..., :num_classes], axis=-1)
        total += label_smoothing * jnp.sum((target_logit - mean_logit) * weights)
    if z_loss:  # log Z = nll + target logit: no second pass over the vocabulary
        total += z_loss * jnp.sum(jnp.square(nll + target_logit) * weights)
    normalizer = stats["weights"] if normalizer is None else normalizer
    return total / jnp.maximum(normalizer, 1.0), stats


def router_losses(
    router_logits: jax.Array, valid: jax.Array, experts_per_token: int
) -> tuple[jax.Array, jax.Array]:
    """(load balancing, z) of a mixture of experts' routers, from their logits [layers, batch,
    length, experts] over the tokens where `valid` [batch, length], each a mean over layers.

    Load balancing (Switch Transformer; transformers' `load_balancing_loss_func` for one layer):
    experts x sum_e f_e P_e, f_e the share of the tokens that choose expert e among their
    `experts_per_token` and P_e their mean router probability of e; experts_per_token when
    perfectly balanced. z (ST-MoE): the mean of log(sum_e exp(logit_e))^2 over the tokens."""
    experts = router_logits.shape[-1]
    weights = valid.astype(jnp.float32)[None, :, :, None]
    tokens = jnp.maximum(jnp.sum(valid), 1)
    probabilities = jax.nn.softmax(router_logits, axis=-1)
    chosen = jax.lax.top_k(probabilities, experts_per_token)[1]
    choices = jnp.sum(jax.nn.one_hot(chosen, experts, dtype=jnp.float32), axis=-2)
    share = jnp.sum(choices * weights, axis=(1, 2)) / tokens  # [layers, experts]
    mean_probability = jnp.sum(probabilities * weights, axis=(1, 2)) / tokens
    balance = experts * jnp.mean(jnp.sum(share * mean_probability, axis=-1))
    log_z = jax.nn.logsumexp(router_logits, axis=-1)
    z = jnp.sum(jnp.square(log_z) * weights[..., 0]) / (tokens * router_logits.shape[0])
    return balance, z


def sown_router_logits(intermediates: dict) -> jax.Array:
    """Every router's logits in a model's `intermediates`, stacked: [layers, batch, length,
    experts]."""
    found = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
        if any(getattr(key, "key", None) == ROUTER_LOGITS for key in path)
    ]
    return jnp.concatenate([x if x.ndim == 4 else x[None] for x in found])


def causal_lm_loss(
    model,
    params,
    batch,
    rngs,
    deterministic,
    router_aux_loss=0.0,
    router_z_loss=0.0,
    **regularizers,
):
    """GPT: batch has inputs, targets, weights and optionally positions, segment_ids.

    A mixture of experts trained with `router_aux_loss` or `router_z_loss` adds those weights
    times `router_losses` of the tokens (every token of segment > 0), and reports the load
    balancing in `stats["router_balance"]` (times the weight, as the loss's terms)."""
    routed = model.cfg.num_experts > 0 and (router_aux_loss or router_z_loss)
    out = model.apply(
        {"params": params},
        batch["inputs"],
        batch.get("positions"),
        batch.get("segment_ids"),
        deterministic=deterministic,
        rngs=rngs,
        mutable=["intermediates"] if routed else False,
    )
    logits, state = out if routed else (out, None)
    vocab = model.cfg.vocab_size
    loss, stats = token_loss(logits, batch["targets"], batch["weights"], vocab, **regularizers)
    if routed:
        router_logits = sown_router_logits(state["intermediates"])
        valid = batch.get("segment_ids", jnp.ones(batch["inputs"].shape, jnp.int32)) > 0
        extra = router_logits.shape[2] - valid.shape[1]  # a soft prompt's positions
        valid = jnp.pad(valid, ((0, 0), (extra, 0)), constant_values=True)
        balance, z = router_losses(router_logits, valid, model.cfg.experts_per_token)
        loss += router_aux_loss * balance + router_z_loss * z
        stats["router_balance"] = balance * stats["weights"]
    return loss, stats


def seq2seq_loss(model, params, batch, rngs, deterministic, **regularizers):
    """Encoder-decoder: source, target_inputs, targets, weights (+ optional segments/positions)."""
    logits = model.apply(
        {"params": params},
        batch["source"],
        batch["target_inputs"],
        batch.get("source_segments"),
        batch.get("target_segments"),
        batch.get("source_positions"),
        batch.get("target_positions"),
        deterministic=deterministic,
        rngs=rngs,
    )
    vocab = model.cfg.vocab_size
    return token_loss(logits, batch["targets"], batch["weights"], vocab, **regularizers)


# BERT's heads: (logits, targets, weights) keys. A head trains when the batch has its targets;
# without its weights, every target counts once.
BERT_HEADS = {
    "mlm": ("mlm_logits", "mlm_targets", "mlm_weights"),
    "nsp": ("nsp_logits", "nsp_labels", "nsp_weights"),
    "classifier": ("class_logits", "labels", "label_weights"),
}


def bert_head_weights(batch: dict) -> dict[str, jax.Array]:
    """{head: target weights} of the heads the batch trains."""
    return {
        head: batch.get(weights, jnp.ones(batch[targets].shape, jnp.float32))
        for head, (_, targets, weights) in BERT_HEADS.items()
        if targets in batch
    }


def bert_loss(model, params, batch, rngs, deterministic, normalizers=None, **regularizers):
    """BERT: the sum of its heads' mean losses (`BERT_HEADS`): masked-LM, next-sentence and
    class. `normalizers` {head: weight} replaces each head's weight in this batch as the divisor
    of its summed loss: a microbatch's loss is then its share of the whole batch's. Stats are
    those of the masked-LM tokens, else of the first head present."""
    out = model.apply(
        {"params": params},
        batch["inputs"],
        batch.get("type_ids"),
        batch.get("segment_ids"),
        deterministic=deterministic,
        rngs=rngs,
    )
    loss, stats = jnp.zeros((), jnp.float32), {}
    for head, weights in bert_head_weights(batch).items():
        logits, targets, _ = BERT_HEADS[head]
        mean, head_stats = token_loss(
            out[logits],
            batch[targets],
            weights,
            model.cfg.vocab_size if head == "mlm" else None,
            normalizer=None if normalizers is None else normalizers[head],
            **regularizers,
        )
        loss += mean
        stats = stats or head_stats
    return loss, stats


LOSSES = {"gpt": causal_lm_loss, "seq2seq": seq2seq_loss, "bert": bert_loss}


def training_loss(cfg) -> Callable:
    """The family's loss with the config's `train.label_smoothing` and `train.z_loss`, and a
    mixture of experts' `train.router_aux_loss` and `train.router_z_loss`."""
    t = cfg.train
    regularizers = {"label_smoothing": t.label_smoothing, "z_loss": t.z_loss}
    if cfg.model.num_experts:
        regularizers |= {"router_aux_loss": t.router_aux_loss, "router_z_loss": t.router_z_loss}
    return functools.partial(LOSSES[cfg.model.family], **regularizers)
