"""The hookable Trainer: a custom loss, custom metrics, any optax optimizer and callbacks."""

import json

import jax.numpy as jnp
import optax
import pytest

from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.train.callbacks import Callback, EarlyStopping
from jaxlm.train.losses import causal_lm_loss
from jaxlm.train.trainer import Trainer


def _config(files, workdir, steps=6, extra=()):
    return load_config(
        None,
        [
            f"data.train_files=[{','.join(str(f) for f in files)}]",
            "data.eval_fraction=0.1",
            "data.seq_len=32",
            "data.batch_size=8",
            "model.num_layers=1",
            "model.embed_dim=32",
            "model.num_heads=2",
            "model.mlp_dim=64",
            "model.vocab_size=512",
            "model.max_len=32",
            f"train.steps={steps}",
            "train.log_every=1",
            "train.eval_every=3",
            "train.eval_batches=2",
            "train.progress_bar=false",
            f"train.workdir={workdir}",
            *extra,
        ],
    )


def _train_losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.fixture(scope="module")
def tokenizer_file(real_text_files, tmp_path_factory):
    """One tokenizer for every run here (training one per run would dominate the time)."""
    from jaxlm.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(real_text_files, path, vocab_size=512)
    return path


def test_custom_loss_is_trained_and_reported(real_text_files, tokenizer_file, tmp_path):
    extra = [f"data.tokenizer={tokenizer_file}"]
    Trainer(_config(real_text_files, tmp_path / "plain", 2, extra)).fit()

    def tripled(model, params, batch, rngs, deterministic):
        loss, stats = causal_lm_loss(model, params, batch, rngs, deterministic)
        return 3 * loss, stats

    Trainer(_config(real_text_files, tmp_path / "custom", 2, extra), loss_fn=tripled).fit()
    plain, custom = _train_losses(tmp_path / "plain"), _train_losses(tmp_path / "custom")
    # Same init and batches; AdamW is invariant to the loss scale, so the curves stay 3x apart.
    assert custom == pytest.approx([3 * loss for loss in plain], rel=1e-4)


def test_callback_stops_the_run_at_its_step(real_text_files, tokenizer_file, tmp_path):
    seen = []

    class StopAtFour(Callback):
        def on_step_end(self, trainer, step, metrics):
            seen.append(step)
            if step == 4:
                trainer.stop("enough")

    trainer = Trainer(
        _config(real_text_files, tmp_path, 10, [f"data.tokenizer={tokenizer_file}"]),
        callbacks=[StopAtFour()],
    )
    last = trainer.fit()
    assert seen == [1, 2, 3, 4] and trainer.step == 4
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4]
    assert last["train_loss"] == _train_losses(tmp_path)[-1]
    assert "eval_loss" in last  # the stopping step is evaluated like a last step

    # settings override cfg.sample: greedy, so 3 new tokens begin the text of 6
    short = trainer.generate(["The", "It"], temperature=0.0, max_new_tokens=3)
    longer = trainer.generate(["The", "It"], temperature=0.0, max_new_tokens=6)
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(short, longer, strict=True))
    with pytest.raises(ConfigError, match="unknown sample setting.*'temprature'"):
        trainer.generate(["The"], temprature=0.0)


def test_early_stopping_and_custom_metric_and_optimizer(real_text_files, tokenizer_file, tmp_path):
    def mean_target_id(model, params, batch):
        return jnp.sum(batch["targets"] * batch["weights"]), jnp.sum(batch["weights"])

    evaluations = []

    class Record(Callback):
        def on_eval_end(self, trainer, step, metrics):
            evaluations.append((step, metrics))

    # lr 0: the eval loss never improves, so patience 2 stops at the second evaluation after 0.
    trainer = Trainer(
        _config(real_text_files, tmp_path, 30, [f"data.tokenizer={tokenizer_file}"]),
        optimizer=optax.sgd(0.0),
        eval_metrics={"mean_target_id": mean_target_id},
        callbacks=[EarlyStopping("eval_loss", patience=2), Record()],
    )
    trainer.fit()
    assert [step for step, _ in evaluations] == [0, 3, 6] and trainer.step == 6
    assert evaluations[0][1]["eval_loss"] == evaluations[-1][1]["eval_loss"]
    batches = list(trainer.data.eval_batches(2))
    expected = sum(float((b["targets"] * b["weights"]).sum()) for b in batches) / sum(
        float(b["weights"].sum()) for b in batches
    )
    assert evaluations[0][1]["eval_mean_target_id"] == pytest.approx(expected, rel=1e-6)
    records = (tmp_path / "metrics.jsonl").read_text()
    assert "learning_rate" not in records  # a bare optax optimizer has no schedule to report
