"""Training: the one place with a loop, I/O and side effects.

    metrics = train(load_config("configs/demo.yaml"))

reads the corpus, trains (or loads) the tokenizer, builds the state on the mesh, resumes from
the latest readable checkpoint in the workdir, trains with periodic evaluation, then writes a
final checkpoint, the loss plot and samples.

Fault tolerance: checkpoints are written asynchronously and atomically, so a run killed at any
moment loses only the steps since the last one, and resuming is exact (the data pipeline and the
dropout keys are functions of the seed and the step). SIGTERM / SIGINT checkpoint the current
step and raise `Preempted` (the CLI exits with `PREEMPTED_EXIT_CODE`). A non-finite loss or
gradient norm stops training before it is checkpointed (`train.nan_policy=stop`) or is skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm

from jaxlm.checkpoint import Checkpointer
from jaxlm.config import Config, to_yaml
from jaxlm.data.documents import read_documents, resolve_files, split_documents
from jaxlm.data.pipeline import lm_dataset
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.generate import generate_text
from jaxlm.metrics import TokenTotals, language_model_metrics
from jaxlm.parallel import activate, check_batch_size, make_mesh, shard_batch
from jaxlm.train.metrics_log import MetricsLog, read_metrics
from jaxlm.train.optim import make_optimizer
from jaxlm.train.plot import plot_loss
from jaxlm.train.preemption import Preempted, Preemption
from jaxlm.train.state import init_state, state_shardings
from jaxlm.train.step import compile_steps


def prepare_tokenizer(cfg: Config, files: list[Path], workdir: Path) -> Tokenizer:
    """The configured sentencepiece model, or one trained on the corpus into the workdir."""
    if cfg.data.tokenizer:
        tokenizer = Tokenizer.load(Path(cfg.data.tokenizer))
    elif (workdir / "tokenizer.model").exists():
        tokenizer = Tokenizer.load(workdir / "tokenizer.model")
    else:
        log(f"training a {cfg.data.tokenizer_type} tokenizer of {cfg.model.vocab_size} tokens")
        tokenizer = train_tokenizer(
            files,
            workdir / "tokenizer.model",
            cfg.model.vocab_size,
            cfg.data.tokenizer_type,
            cfg.data.tokenizer_sample_lines,
        )
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"config key 'model.vocab_size': {cfg.model.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size} tokens"
        )
    return tokenizer


def _due(step: int, every: int, last_step: int) -> bool:
    """Periodic actions run every `every` steps (never when 0) and at the last step."""
    return step == last_step or (every > 0 and step % every == 0)


class Throughput:
    """Tokens per second of training since the last restart (host-side wall clock)."""

    def __init__(self, tokens_per_step: int, step: int):
        self.tokens_per_step = tokens_per_step
        self.step, self.time = step, time.perf_counter()

    def restart(self, step: int) -> float:
        """Start measuring after `step`; returns the seconds since the previous restart."""
        now = time.perf_counter()
        elapsed, self.step, self.time = now - self.time, step, now
        return elapsed

    def rate(self, step: int) -> float:
        steps = step - self.step
        return steps * self.tokens_per_step / self.restart(step)


class TrainingDiverged(JaxlmError):
    """The loss or gradient norm became NaN or infinite (with `train.nan_policy=stop`)."""


class NonFiniteGuard:
    """Checks each step's `finite` flag one step late, so the host never waits on the device.

    `flush()` checks the pending step now: call it before anything is saved.
    """

    def __init__(self, policy: str):
        self.policy = policy
        self.pending: tuple[int, jax.Array] | None = None

    def push(self, step: int, finite: jax.Array) -> None:
        self.flush()
        self.pending = (step, finite)

    def flush(self) -> None:
        if self.pending is None:
            return
        (step, finite), self.pending = self.pending, None
        if bool(finite):
            return
        if self.policy == "stop":
            raise TrainingDiverged(
                f"non-finite loss or gradient norm at step {step}; stopped without "
                f"checkpointing it (train.nan_policy=skip would skip such steps)"
            )
        log(f"step {step:>6} | non-finite loss or gradient norm: update skipped")


def restore_or_init(cfg: Config, tx, mesh, checkpointer: Checkpointer):
    """(state, shardings, step) from the latest readable checkpoint, or fresh at step 0.

    Newer unreadable checkpoints are deleted (with a warning) so that their steps can be redone.
    """
    if not checkpointer.all_steps():
        state, shardings = init_state(cfg.model, tx, mesh, cfg.train.seed)
        return state, shardings, 0
    abstract, shardings = state_shardings(cfg.model, tx, mesh)
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


def log(message: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(message)


def evaluate(eval_step, params, batches, mesh) -> dict[str, float]:
    """Loss, perplexity and token accuracy over all weighted tokens of `batches` ({} if none)."""
    totals = TokenTotals()
    for batch in batches:
        totals.add(jax.device_get(eval_step(params, shard_batch(batch, mesh))))
    return language_model_metrics(totals) if totals.weights > 0 else {}


def _eval_and_log(eval_step, params, batches, mesh, step, metrics_log, last) -> dict[str, float]:
    """Evaluates and logs; returns `{"eval_loss": ..., ...}` ({} without held-out data)."""
    results = evaluate(eval_step, params, batches, mesh)
    if results:
        metrics_log.write(step, "eval", results)
        log(
            f"step {step:>6} | eval loss {results['loss']:.4f} | "
            f"perplexity {results['perplexity']:.1f}"
        )
        last.update({f"eval_{k}": v for k, v in results.items()})
    return {f"eval_{k}": v for k, v in results.items()}


def train(cfg: Config) -> dict[str, float]:
    """Train `cfg` in `cfg.train.workdir`; returns the last train and eval metrics."""
    if cfg.model.family != "gpt":
        raise ConfigError(
            "config key 'model.family': training from text supports 'gpt', "
            f"not {cfg.model.family!r}"
        )
    workdir = Path(cfg.train.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    files = resolve_files(cfg.data.train_files)
    documents = read_documents(files, cfg.data.document_unit)
    train_docs, eval_docs = split_documents(documents, cfg.data.eval_fraction)
    log(f"corpus: {len(files)} files, {len(train_docs)} train / {len(eval_docs)} eval documents")
    tokenizer = prepare_tokenizer(cfg, files, workdir)
    (workdir / "config.yaml").write_text(to_yaml(cfg))

    mesh = make_mesh(cfg.mesh)
    check_batch_size(cfg.data.batch_size, mesh)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    checkpointer = Checkpointer(
        workdir / "checkpoints",
        cfg.train.keep_checkpoints,
        keep_best=cfg.train.keep_best,
        best_metric=cfg.train.best_metric,
        clean_unfinished=True,
    )
    state, shardings, start = restore_or_init(cfg, tx, mesh, checkpointer)
    train_step, eval_step = compile_steps(cfg, tx, schedule, shardings, mesh)

    def dataset(docs, *, training):
        return lm_dataset(
            docs,
            tokenizer,
            seq_len=cfg.data.seq_len,
            batch_size=cfg.data.batch_size // jax.process_count(),
            seed=cfg.train.seed,
            shuffle=training,
            repeat=training,
            shuffle_buffer=cfg.data.shuffle_buffer,
        )

    # The same seed gives the same batch sequence; a resumed run skips what it already saw.
    batches = dataset(train_docs, training=True).skip(start).as_numpy_iterator()

    def eval_batches():
        if not eval_docs:
            return []
        return itertools.islice(
            dataset(eval_docs, training=False).as_numpy_iterator(), cfg.train.eval_batches
        )

    metrics_log = MetricsLog(workdir)
    last: dict[str, float] = {}
    progress = tqdm(
        total=cfg.train.steps,
        initial=start,
        desc="train",
        disable=not cfg.train.progress_bar or jax.process_index() != 0,
        dynamic_ncols=True,
    )
    meter = Throughput(cfg.data.batch_size * cfg.data.seq_len, start)
    guard = NonFiniteGuard(cfg.train.nan_policy)

    def checkpoint(step: int, metrics: dict[str, float] | None = None) -> None:
        guard.flush()  # never checkpoint a poisoned state
        if checkpointer.latest_step() != step:
            checkpointer.save(step, state, metrics)

    with contextlib.ExitStack() as cleanup:  # pending saves finish however the loop ends
        preemption = cleanup.enter_context(Preemption())
        for close in (metrics_log.close, checkpointer.close, progress.close):
            cleanup.callback(close)
        cleanup.enter_context(activate(mesh))
        if start == 0 and cfg.train.eval_every:  # the untrained model's loss starts the curve
            _eval_and_log(eval_step, state.params, eval_batches(), mesh, 0, metrics_log, last)
        meter.restart(start)
        for step in range(start + 1, cfg.train.steps + 1):
            state, metrics = train_step(state, shard_batch(next(batches), mesh))
            guard.push(step, metrics.pop("finite"))
            progress.update()
            if step == start + 1:  # the first step includes compilation: keep it out of tokens/s
                jax.block_until_ready(metrics)
                log(f"compiled and ran the first step in {meter.restart(step):.1f}s")
            if _due(step, cfg.train.log_every, cfg.train.steps):
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                metrics["tokens_per_second"] = meter.rate(step)
                metrics_log.write(step, "train", metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.3f}")
                log(
                    f"step {step:>6}/{cfg.train.steps} | loss {metrics['loss']:.4f} | "
                    f"lr {metrics['learning_rate']:.2e} | "
                    f"{metrics['tokens_per_second']:,.0f} tokens/s"
                )
                last.update({f"train_{k}": v for k, v in metrics.items()})
            evaluated = {}
            if _due(step, cfg.train.eval_every, cfg.train.steps):
                evaluated = _eval_and_log(
                    eval_step, state.params, eval_batches(), mesh, step, metrics_log, last
                )
                meter.restart(step)  # evaluation time is not training throughput
            # Evaluated steps are checkpointed too when the best ones are kept.
            if _due(step, cfg.train.checkpoint_every, cfg.train.steps) or (
                evaluated and cfg.train.keep_best
            ):
                checkpoint(step, evaluated)
            if preemption.requested(step):
                checkpoint(step, evaluated)
                log(f"step {step:>6} | {preemption.signal_name}: checkpointed, stopping")
                raise Preempted(step, preemption.signal_name)
        checkpoint(int(state.step))

    if jax.process_index() == 0:
        plot = plot_loss(read_metrics(metrics_log.path), workdir / "loss.png", title=str(workdir))
        log(f"loss plot: {plot}")
    if cfg.sample.prompts:
        texts = generate_text(cfg.model, state.params, tokenizer, cfg.sample.prompts, cfg.sample)
        for prompt, text in zip(cfg.sample.prompts, texts, strict=True):
            log(f"--- sample ---\n{prompt}{text}")
    return last
