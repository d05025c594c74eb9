"""Pure loss functions for the three model families, returning summed statistics.

Each takes `(model, params, batch, rngs, deterministic)` and returns `(loss, stats)`: the loss
to differentiate (mean over weighted targets) and float32 sums (`nll`, `weights`, `correct`)
that add up across batches, so that eval perplexity is exp(sum nll / sum weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
    weights = weights.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = predicts_target(logits, targets).astype(jnp.float32)
    return {
        "nll": jnp.sum(nll * weights),
        "weights": jnp.sum(weights),
        "correct": jnp.sum(correct * weights),
    }


def _mean(stats: dict) -> jax.Array:
    return stats["nll"] / jnp.maximum(stats["weights"], 1.0)


def causal_lm_loss(model, params, batch, rngs, deterministic):
    """GPT: batch has inputs, targets, weights and optionally positions, segment_ids."""
    logits = model.apply(
        {"params": params},
        batch["inputs"],
        batch.get("positions"),
        batch.get("segment_ids"),
        deterministic=deterministic,
        rngs=rngs,
    )
    stats = token_statistics(logits, batch["targets"], batch["weights"])
    return _mean(stats), stats


def seq2seq_loss(model, params, batch, rngs, deterministic):
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
    stats = token_statistics(logits, batch["targets"], batch["weights"])
    return _mean(stats), stats


def bert_loss(model, params, batch, rngs, deterministic):
    """BERT: masked-LM loss on mlm_targets/mlm_weights, plus next-sentence and class losses
    when the batch has nsp_labels / labels (weighted by nsp_weights / label_weights when given);
    stats are those of the masked-LM tokens, else of the first head present."""
    out = model.apply(
        {"params": params},
        batch["inputs"],
        batch.get("type_ids"),
        batch.get("segment_ids"),
        deterministic=deterministic,
        rngs=rngs,
    )
    loss, stats = jnp.zeros((), jnp.float32), {}
    if "mlm_targets" in batch:
        stats = token_statistics(out["mlm_logits"], batch["mlm_targets"], batch["mlm_weights"])
        loss += _mean(stats)
    for key, labels, weights in (
        ("nsp_logits", "nsp_labels", "nsp_weights"),
        ("class_logits", "labels", "label_weights"),
    ):
        if labels in batch:
            ones = jnp.ones(batch[labels].shape, jnp.float32)
            head = token_statistics(out[key], batch[labels], batch.get(weights, ones))
            loss += _mean(head)
            stats = stats or head
    return loss, stats


LOSSES = {"gpt": causal_lm_loss, "seq2seq": seq2seq_loss, "bert": bert_loss}
