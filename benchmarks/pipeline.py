"""Input pipeline throughput against the train step's consumption, on the same machine.

    make data
    python benchmarks/pipeline.py [--config demo] [--batches 200] [--steps 20] [--write]

For the config's data (default: the demo, Shakespeare), measures tokens/s delivered as
device-ready batches (host batch + `shard_batch` onto the mesh, blocked until on device) by:

- the packed causal-LM pipeline (tf.data) the config trains with,
- the same tokens read from a pre-tokenized memory-mapped token file (no TensorFlow),
- masked-LM rows with next-sentence pairs built from the same documents,

and the tokens/s the compiled train step of the config's model consumes (median of --steps
steps after compilation). The pipeline must deliver at least 10x what the step consumes.
--write saves the table to benchmarks/PIPELINE.md.
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

import jax  # noqa: E402

from jaxlm.config import load_config  # noqa: E402
from jaxlm.data.batching import IndexedBatches  # noqa: E402
from jaxlm.data.loader import training_data  # noqa: E402
from jaxlm.data.masked_lm import masked_lm_rows  # noqa: E402
from jaxlm.data.sources import load_splits  # noqa: E402
from jaxlm.data.token_file import TokenFile, write_token_file  # noqa: E402
from jaxlm.parallel import activate, make_mesh, shard_batch  # noqa: E402
from jaxlm.train.optim import make_optimizer  # noqa: E402
from jaxlm.train.state import init_state  # noqa: E402
from jaxlm.train.step import compile_train_step  # noqa: E402

REPORT = Path(__file__).resolve().parent / "PIPELINE.md"


def delivered_tokens_per_second(batches, mesh, count: int, tokens_per_batch: int) -> float:
    """Tokens/s of `count` batches made device-ready, after one warm-up batch."""
    jax.block_until_ready(shard_batch(next(batches), mesh))
    start = time.perf_counter()
    for _ in range(count):
        jax.block_until_ready(shard_batch(next(batches), mesh))
    return count * tokens_per_batch / (time.perf_counter() - start)


def consumed_tokens_per_second(cfg, batch, mesh, steps: int) -> float:
    """Tokens/s of the compiled train step (median step time after compilation)."""
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = init_state(cfg.model, tx, mesh, cfg.train.seed)
    train_step = compile_train_step(cfg, tx, schedule, shardings, mesh)
    device_batch = shard_batch(batch, mesh)
    with activate(mesh):
        state, metrics = train_step(state, device_batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = train_step(state, device_batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    return cfg.data.batch_size * cfg.data.seq_len / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    cfg = load_config(args.config)
    d = cfg.data
    tokens_per_batch = d.batch_size * d.seq_len
    mesh = make_mesh(cfg.mesh)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        data = training_data(cfg, Path(workdir), log=lambda message: None)
        rows.append(
            (
                "packed causal LM (tf.data)",
                delivered_tokens_per_second(
                    data.train_batches(0), mesh, args.batches, tokens_per_batch
                ),
            )
        )
        documents = load_splits(d).train
        token_path = Path(workdir) / "train.tokens"
        write_token_file(documents, data.tokenizer, token_path)
        token_batches = TokenFile.open(token_path).batches(d.seq_len, d.batch_size, seed=0)
        rows.append(
            (
                "packed causal LM (token file)",
                delivered_tokens_per_second(token_batches, mesh, args.batches, tokens_per_batch),
            )
        )
        mlm = masked_lm_rows(
            documents, data.tokenizer, seq_len=d.seq_len, probability=0.15, next_sentence=True
        )
        mlm_batches = IndexedBatches(
            mlm.count, mlm.make_row, batch_size=d.batch_size, seed=0, weight_keys=mlm.weight_keys
        ).batches()
        rows.append(
            (
                "masked LM + next sentence",
                delivered_tokens_per_second(mlm_batches, mesh, args.batches, tokens_per_batch),
            )
        )
        step_rate = consumed_tokens_per_second(cfg, next(data.train_batches(0)), mesh, args.steps)

    lines = [
        f"| source | tokens/s delivered | x train step ({step_rate:,.0f} tokens/s) |",
        "|---|---:|---:|",
        *(f"| {name} | {rate:,.0f} | {rate / step_rate:,.1f}x |" for name, rate in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        header = (
            "# Input pipeline throughput\n\n"
            f"`python benchmarks/pipeline.py --config {args.config} --batches {args.batches}`, "
            f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), "
            f"jax {jax.__version__}, {len(jax.devices())} "
            f"{jax.devices()[0].platform} device(s). Batches of {d.batch_size} x {d.seq_len} "
            "tokens made device-ready (`shard_batch`, blocked until on device) against the "
            f"compiled train step of the `{args.config}` model on the same machine.\n\n"
        )
        REPORT.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
