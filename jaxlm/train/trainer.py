"""Training: the one place with a loop, I/O and side effects.

    trainer = Trainer(load_config("demo"), callbacks=[EarlyStopping("eval_loss", patience=2)])
    metrics = trainer.fit()          # or simply: train(cfg)
    trainer.evaluate(); trainer.generate(["ROMEO."])

reads the data, trains (or loads) the tokenizer, builds the state on the mesh, resumes from the
latest readable checkpoint in the workdir, trains with periodic evaluation, then writes a final
checkpoint, the loss plot and samples. A custom loss (a pure function with the signature of
`jaxlm.train.losses`), extra evaluation metrics, any optax optimizer and callbacks plug in
without touching the compiled steps' purity.

Fault tolerance: checkpoints are written asynchronously and atomically, so a run killed at any
moment loses only the steps since the last one, and resuming is exact (the data pipeline and the
dropout keys are functions of the seed and the step). SIGTERM / SIGINT checkpoint the current
step and raise `Preempted` (the CLI exits with `PREEMPTED_EXIT_CODE`). A non-finite loss or
gradient norm stops training before it is checkpointed (`train.nan_policy=stop`) or is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import optax
from tqdm.auto import tqdm

from jaxlm.checkpoint import Checkpointer, has_checkpoints
from jaxlm.config import Config, check_task
from jaxlm.data.loader import TrainingData, training_data
from jaxlm.data.tasks import tokens_per_row
from jaxlm.distributed import initialize, on_process_zero, require_shared_workdir
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.finetune import prepare as prepare_finetuning
from jaxlm.generate import generate_text
from jaxlm.parallel import activate, check_batch_size, make_mesh, prefetch_to_device
from jaxlm.train import run_config
from jaxlm.train.callbacks import Callback
from jaxlm.train.evaluation import compile_eval_step, evaluate
from jaxlm.train.losses import training_loss
from jaxlm.train.metrics_log import MetricsLog, read_metrics
from jaxlm.train.monitoring import NonFiniteGuard, Throughput, log
from jaxlm.train.optim import make_optimizer
from jaxlm.train.plot import plot_loss
from jaxlm.train.preemption import Preempted, Preemption
from jaxlm.train.profiling import PROFILE_DIR, StepProfiler
from jaxlm.train.state import init_state, state_from_params, state_shardings
from jaxlm.train.step import compile_train_step
from jaxlm.translation_eval import translation_bleu


def _due(step: int, every: int, last_step: int) -> bool:
    """Periodic actions run every `every` steps (never when 0) and at the last step."""
    return step == last_step or (every > 0 and step % every == 0)


def restore_or_init(cfg: Config, tx, mesh, checkpointer: Checkpointer, params=None):
    """(state, shardings, step) from the latest readable checkpoint, or fresh at step 0 (from
    `params` when given, else a seeded random init).

    Newer unreadable checkpoints are deleted (with a warning) so that their steps can be redone.
    """
    if not checkpointer.all_steps():
        if params is None:
            state, shardings = init_state(cfg.model, tx, mesh, cfg.train.seed)
        else:
            state, shardings = state_from_params(cfg.model, tx, mesh, params)
        return state, shardings, 0
    abstract, shardings = state_shardings(cfg.model, tx, mesh, params)
    state, meta = checkpointer.restore_with_meta(abstract, shardings)
    start = int(meta["data_batches_consumed"])
    if int(state.step) != start:
        raise JaxlmError(
            f"checkpoint {checkpointer.directory / str(meta['step'])} is inconsistent: state "
            f"step {int(state.step)}, data position {start}"
        )
    if discarded := checkpointer.discard_after(start):
        log(f"deleted the unreadable checkpoints of steps {discarded}: they will be redone")
    log(f"resumed from step {start} in {checkpointer.directory}")
    return state, shardings, start


class Trainer:
    """Trains `cfg.model` on `cfg.data` in `cfg.train.workdir` (see the module doc).

    data: batches to use instead of those `cfg.data` describes (`jaxlm.data.loader`).
    loss_fn: `(model, params, batch, rngs, deterministic) -> (loss, stats)`, pure and jittable,
        instead of the family's (`losses.training_loss`: `train.label_smoothing` and
        `train.z_loss` apply to it only); stats must hold the summed `nll`, `weights` and
        `correct` (`losses.token_statistics`), and the loss be a mean over those weights (for
        a bert model accumulating microbatches: take `normalizers`, see `losses.bert_loss`).
    eval_metrics: `{name: fn(model, params, batch) -> (sum, count)}`, reported as
        `eval_<name>` = total sum / total count over the evaluation split.
    optimizer: any optax `GradientTransformation` (default: the one `cfg.optim` describes).
    callbacks: `jaxlm.train.callbacks.Callback`s.
    params: initial parameters instead of a random init (ignored when resuming).

    `cfg.finetune` (`jaxlm.finetune`) sets the model and initial parameters from pretrained
    weights, adds an adapter, and keeps the frozen parameters out of the gradient and optimizer.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        data: TrainingData | None = None,
        loss_fn: Callable | None = None,
        eval_metrics: dict[str, Callable] | None = None,
        optimizer: optax.GradientTransformation | None = None,
        callbacks: Sequence[Callback] = (),
        params: dict | None = None,
    ):
        initialize(cfg)  # multi-host setup precedes any device use
        self.finetuning = None
        if (finetuning := prepare_finetuning(cfg, log)) is not None:
            self.finetuning, initial = finetuning
            cfg, params = self.finetuning.cfg, initial if params is None else params
        check_task(cfg)
        self.cfg, self.callbacks = cfg, list(callbacks)
        self.workdir = Path(cfg.train.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        require_shared_workdir(self.workdir)
        if has_checkpoints(self.workdir / "checkpoints"):
            run_config.check_resumable(cfg, self.workdir)
        self.data = data or training_data(cfg, self.workdir, log)
        log(self.data.summary)
        if cfg.data.task == "classification" and cfg.model.num_classes != len(self.data.labels):
            raise ConfigError(
                f"config key 'model.num_classes': {cfg.model.num_classes}, but the data has "
                f"{len(self.data.labels)} labels {self.data.labels}"
            )
        on_process_zero(lambda: run_config.save(cfg, self.workdir), "jaxlm config")
        self.mesh = make_mesh(cfg.mesh)
        check_batch_size(cfg.data.batch_size, self.mesh)
        if optimizer is None:
            tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
        else:
            tx, schedule = optimizer, None
        if self.finetuning is not None:
            tx = self.finetuning.optimizer(tx)
            loss_fn = self.finetuning.loss(loss_fn or training_loss(cfg))
        self.checkpointer = Checkpointer(
            self.workdir / "checkpoints",
            cfg.train.keep_checkpoints,
            keep_best=cfg.train.keep_best,
            best_metric=cfg.train.best_metric,
            best_mode=cfg.train.best_mode,
            clean_unfinished=True,
        )
        self.state, shardings, self.start = restore_or_init(
            cfg, tx, self.mesh, self.checkpointer, params
        )
        self.train_step = compile_train_step(cfg, tx, schedule, shardings, self.mesh, loss_fn)
        params_sharding, self._model_params = shardings.params, None
        if self.finetuning is not None:  # evaluation sees the model's parameters (LoRA merged)
            params_sharding = self.finetuning.model_layout(shardings.params)
            self._model_params = jax.jit(
                self.finetuning.model_params, out_shardings=params_sharding
            )
        self.eval_step = compile_eval_step(
            cfg, params_sharding, self.mesh, loss_fn, eval_metrics or {}
        )
        self.metrics_log = MetricsLog(self.workdir)
        self.last: dict[str, float] = {}  # the latest train_* and eval_* metrics
        self.stop_reason: str | None = None
        self.guard = NonFiniteGuard(cfg.train.nan_policy)

    @property
    def params(self) -> dict:
        """The model's parameters: a fine-tuning adapter such as LoRA is merged in."""
        if self._model_params is None:
            return self.state.params
        return self._model_params(self.state.params)

    @property
    def step(self) -> int:
        return int(self.state.step)

    def stop(self, reason: str = "stop requested") -> None:
        """Ends `fit` after the current step (callbacks call this)."""
        self.stop_reason = reason

    def _callbacks(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def evaluate(self, limit: int | None = None) -> dict[str, float]:
        """Metrics of the current parameters on the evaluation split (`limit` batches at most,
        default `train.eval_batches`; 0 = all), as `{"eval_loss": ..., ...}`."""
        limit = self.cfg.train.eval_batches if limit is None else limit
        with activate(self.mesh):
            params = self.params
            results = evaluate(
                self.eval_step, params, self.data.eval_batches(limit), self.mesh, self.data.labels
            )
            if results and self.cfg.train.eval_bleu:
                pairs = self.data.eval_examples[: limit * self.cfg.data.batch_size or None]
                beams = self.cfg.train.eval_bleu_beams
                results |= translation_bleu(self.cfg, params, self.data.tokenizer, pairs, beams)[0]
        return {f"eval_{k}": v for k, v in results.items()}

    def _evaluate_and_log(self, step: int) -> dict[str, float]:
        results = self.evaluate()
        if results:
            best = self.cfg.train.best_metric
            if self.cfg.train.keep_best and best not in results:
                raise ConfigError(
                    f"config key 'train.best_metric': this run's evaluation reports no {best!r}; "
                    f"it reports {', '.join(sorted(results))}"
                )
            self.metrics_log.write(step, "eval", {k[5:]: v for k, v in results.items()})
            names = ("perplexity", "accuracy", "macro_f1", "bleu", "chrf")
            shown = [k for k in names if f"eval_{k}" in results]
            log(
                f"step {step:>6} | eval loss {results['eval_loss']:.4f}"
                + "".join(f" | {k.replace('_', ' ')} {results[f'eval_{k}']:.4g}" for k in shown)
            )
            self.last |= results
            self._callbacks("on_eval_end", step, results)
        return results

    def save_checkpoint(self, metrics: dict[str, float] | None = None) -> None:
        """Checkpoints the current step (asynchronously) unless it already is."""
        self.guard.flush()  # never checkpoint a poisoned state
        if self.checkpointer.latest_step() != self.step:
            self.checkpointer.save(self.step, self.state, metrics)

    def fit(self) -> dict[str, float]:
        """Trains to `train.steps` (or until a callback stops it); returns the last metrics."""
        cfg = self.cfg
        # The same seed gives the same batch sequence; a resumed run continues at batch `start`.
        batches = prefetch_to_device(self.data.train_batches(self.start), self.mesh)
        progress = tqdm(
            total=cfg.train.steps,
            initial=self.start,
            desc="train",
            disable=not cfg.train.progress_bar or jax.process_index() != 0,
            dynamic_ncols=True,
        )
        meter = Throughput(cfg.data.batch_size * tokens_per_row(cfg.data), self.start)
        self._callbacks("on_train_start")
        with contextlib.ExitStack() as cleanup:  # pending saves finish however the loop ends
            preemption = cleanup.enter_context(Preemption())
            for close in (self.metrics_log.close, self.checkpointer.close, progress.close):
                cleanup.callback(close)
            cleanup.enter_context(activate(self.mesh))
            if self.start == 0 and cfg.train.eval_every:  # the untrained model starts the curve
                self._evaluate_and_log(0)
            profiler = StepProfiler(
                self.workdir / PROFILE_DIR,
                self.start + 1 + cfg.train.profile_start,
                cfg.train.profile_steps,
            )
            cleanup.callback(profiler.close)
            meter.restart(self.start)
            for step in range(self.start + 1, cfg.train.steps + 1):
                profiler.before(step)
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    self.state, metrics = self.train_step(self.state, next(batches))
                profiler.after(step, (self.state, metrics))
                self.guard.push(step, metrics.pop("finite"))
                progress.update()
                if step == self.start + 1:  # compilation is not training throughput
                    jax.block_until_ready(metrics)
                    log(f"compiled and ran the first step in {meter.restart(step):.1f}s")
                self._callbacks("on_step_end", step, metrics)
                last_step = cfg.train.steps if self.stop_reason is None else step
                if _due(step, cfg.train.log_every, last_step):
                    self._log_train(step, metrics, meter, progress)
                evaluated = {}
                if cfg.train.eval_every and _due(step, cfg.train.eval_every, last_step):
                    evaluated = self._evaluate_and_log(step)
                    meter.restart(step)  # evaluation time is not training throughput
                # Evaluated steps are checkpointed too when the best ones are kept.
                if _due(step, cfg.train.checkpoint_every, last_step) or (
                    evaluated and cfg.train.keep_best
                ):
                    self.save_checkpoint(evaluated)
                    meter.restart(step)  # neither is starting a save
                if preemption.requested(step):
                    self.save_checkpoint(evaluated)
                    log(f"step {step:>6} | {preemption.signal_name}: checkpointed, stopping")
                    raise Preempted(step, preemption.signal_name)
                if self.stop_reason is not None:
                    log(f"step {step:>6} | stopping: {self.stop_reason}")
                    break
            self.save_checkpoint()
        self._finish()
        return self.last

    def _log_train(self, step: int, metrics: dict, meter: Throughput, progress) -> None:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if step > meter.step:  # not right after the first (compiling) step
            metrics["tokens_per_second"] = meter.rate(step)
        self.metrics_log.write(step, "train", metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}")
        rate = f" | lr {metrics['learning_rate']:.2e}" if "learning_rate" in metrics else ""
        speed = metrics.get("tokens_per_second")
        log(
            f"step {step:>6}/{self.cfg.train.steps} | loss {metrics['loss']:.4f}{rate}"
            + (f" | {speed:,.0f} tokens/s" if speed else "")
        )
        self.last |= {f"train_{k}": v for k, v in metrics.items()}
        self._callbacks("on_log", step, metrics)

    def _finish(self) -> None:
        """The loss plot and samples after training; then the callbacks' `on_train_end`."""
        if jax.process_index() == 0:
            plot = plot_loss(
                read_metrics(self.metrics_log.path),
                self.workdir / "loss.png",
                title=str(self.workdir),
            )
            log(f"loss plot: {plot}")
        family = self.cfg.model.family
        if self.cfg.sample.prompts and family != "bert" and self.data.tokenizer:
            texts = self.generate(self.cfg.sample.prompts)
            joint = " -> " if family == "seq2seq" else ""
            for prompt, text in zip(self.cfg.sample.prompts, texts, strict=True):
                log(f"--- sample ---\n{prompt}{joint}{text}")
        self._callbacks("on_train_end", self.last)

    def generate(self, prompts: list[str], **settings) -> list[str]:
        """Continuations (GPT) or translations (seq2seq, or span fills) of text prompts with the
        current parameters; `settings` override `cfg.sample` (`temperature=0`, `num_beams=4`)."""
        known = {field.name for field in dataclasses.fields(self.cfg.sample)}
        if unknown := sorted(set(settings) - known):
            raise ConfigError(f"unknown sample setting(s) {unknown}: one of {sorted(known)}")
        sample = dataclasses.replace(self.cfg.sample, **settings)
        return generate_text(self.cfg.model, self.params, self.data.tokenizer, prompts, sample)

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        """(class name, probability) of each text, for a classification run."""
        from jaxlm.inference import classify_texts

        return classify_texts(self.cfg, self.params, self.data.tokenizer, texts, self.data.labels)


def train(cfg: Config) -> dict[str, float]:
    """Train `cfg` in `cfg.train.workdir`; returns the last train and eval metrics."""
    return Trainer(cfg).fit()
