"""Evaluation of every task: a pure, jitted step per batch and host-side totals over a dataset.

Token tasks (causal LM, masked LM, seq2seq) report loss, perplexity and token accuracy from
summed statistics; classification reports loss, accuracy and per-class / macro F1 from the
predictions of every weighted example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxlm.config import Config
from jaxlm.metrics import TokenTotals, classification_metrics, language_model_metrics
from jaxlm.models import build_model
from jaxlm.parallel import batch_sharding, replicated, shard_batch
from jaxlm.train.losses import LOSSES, token_statistics


def make_eval_step(
    cfg: Config, loss_fn: Callable | None = None, metrics: dict[str, Callable] | None = None
) -> Callable[[dict, dict], dict]:
    """`(params, batch) -> outputs`: summed token statistics (nll, weights, correct) of the
    family's loss or `loss_fn`, `{name: (sum, count)}` of each custom metric
    `fn(model, params, batch)`, and for classification each row's prediction, label and weight."""
    model = build_model(cfg.model)
    loss_fn = loss_fn or LOSSES[cfg.model.family]

    def custom(params: dict, batch: dict) -> dict:
        return {f"metric/{name}": fn(model, params, batch) for name, fn in (metrics or {}).items()}

    if cfg.data.task != "classification":

        def eval_step(params: dict, batch: dict) -> dict:
            stats = loss_fn(model, params, batch, None, deterministic=True)[1]
            return stats | custom(params, batch)

        return eval_step

    def classify(params: dict, batch: dict) -> dict:
        logits = model.apply(
            {"params": params}, batch["inputs"], batch["type_ids"], batch["segment_ids"]
        )["class_logits"]
        weights = batch["label_weights"]
        stats = token_statistics(logits, batch["labels"], weights)
        predictions = jnp.argmax(logits, axis=-1)
        rows = {"predictions": predictions, "labels": batch["labels"], "rows": weights}
        return stats | rows | custom(params, batch)

    return classify


def compile_eval_step(cfg: Config, params_sharding, mesh: Mesh, loss_fn=None, metrics=None):
    """The jitted eval step; per-row outputs come back replicated for the host to read."""
    return jax.jit(
        make_eval_step(cfg, loss_fn, metrics),
        in_shardings=(params_sharding, batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )


def evaluate(
    eval_step, params, batches: Iterable[dict], mesh: Mesh, labels: list[str] = ()
) -> dict[str, float]:
    """Metrics over all weighted tokens or examples of `batches` ({} if there are none)."""
    totals, predictions, truths, custom = TokenTotals(), [], [], {}
    for batch in batches:
        outputs = jax.device_get(eval_step(params, shard_batch(batch, mesh)))
        totals.add(outputs)
        for key in [k for k in outputs if k.startswith("metric/")]:
            total, count = custom.get(key[7:], (0.0, 0.0))
            custom[key[7:]] = (total + float(outputs[key][0]), count + float(outputs[key][1]))
        if "predictions" in outputs:
            kept = outputs["rows"] > 0
            predictions.append(outputs["predictions"][kept])
            truths.append(outputs["labels"][kept])
    if not totals.weights > 0:
        return {}
    custom = {name: total / max(count, 1e-9) for name, (total, count) in custom.items()}
    if not predictions:
        return language_model_metrics(totals) | custom
    scores = classification_metrics(
        np.concatenate(truths),
        np.concatenate(predictions),
        num_classes=len(labels) or None,
        class_names=list(labels) or None,
    )
    per_class = {f"f1_{name}": values["f1"] for name, values in scores.pop("per_class").items()}
    loss = totals.nll / totals.weights
    return {"loss": loss, **scores, **per_class, "examples": totals.weights, **custom}
