"""Steady-state training speed of jaxlm's train step, optionally beside the PyTorch reference.

    report = run_benchmark(load_config("demo"), steps=20, warmup=3, reference="torch")
    print(format_report(report))  # and json.dumps(report)

Method: the step is compiled once (timed apart), run `warmup` times (then once more at a time,
at most `EXTRA_WARMUP` times, while a step still faults `SETTLED_FAULTS` pages in: the heap is
still growing), then `steps` times, each step timed to completion (`block_until_ready`). With a
reference, PyTorch trains in a process of its own (`jaxlm.bench.torch_process`) and the
frameworks take turns in blocks of a few steps, so that a change in the machine's load hits
both alike. Both train the same GPT from the same initial weights on one fixed random batch
(AdamW, jaxlm's schedule), so their losses must fall alike: printed as a check that they compute
the same thing.

Reported: median and 90th-percentile step time, tokens/s, model FLOP/s (`jaxlm.bench.flops`),
MFU against the chips' datasheet peak (`jaxlm.bench.peaks`) or, on the CPU, a matmul ceiling
measured in the model's compute dtype, and peak memory: the devices' `peak_bytes_in_use` on
GPU/TPU; on the CPU the peak resident set of the framework's process while its steps ran and
XLA's own figure for the compiled step. Also, per step, the process's CPU time (all threads;
less sensitive than wall time to other processes on a busy machine) and its minor page faults
(memory the kernel maps in and zeroes, a cost that `jaxlm.host_memory` removes on the CPU).
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxlm.bench.flops import model_flops
from jaxlm.bench.measure import measure_steps, threads
from jaxlm.bench.peaks import matmul_ceiling, peak_flops
from jaxlm.bench.torch_process import TorchProcess
from jaxlm.bench.trace_summary import top_operations
from jaxlm.config import Config
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.parallel import activate, check_batch_size, make_mesh, shard_batch
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state
from jaxlm.train.step import compile_train_step

BLOCK = 5  # steps a framework runs before the other takes its turn
SETTLED_FAULTS = 1_000  # page faults (4 MiB) per step under which the heap has stopped growing
EXTRA_WARMUP = 10  # the most warm-up steps added while it grows
CEILING = dict(size=2048, repeats=10)  # the CPU matmul ceiling: best of 10 2048^3 dots
TORCH_DTYPES = ("float32", "bfloat16")  # bfloat16: the reference runs under torch.autocast
PROFILED_STEPS = 3  # jaxlm steps traced after the timing, with --profile


def random_batch(cfg: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """One causal-LM batch of uniformly random tokens, each row one document with no padding:
    no segment ids or positions, so attention is causal and nothing else, as in the PyTorch
    reference (and cuDNN or splash attention gets no segment mask)."""
    rows, length = cfg.data.batch_size, cfg.data.seq_len
    tokens = np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (rows, length + 1))
    tokens = tokens.astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": np.ones((rows, length), np.float32),
    }


class JaxlmRunner:
    """jaxlm's sharded, donated train step over the config's mesh, compiled ahead of time."""

    name = "jaxlm"

    def __init__(self, cfg: Config, batch: dict[str, np.ndarray], total_steps: int):
        self.mesh = make_mesh(cfg.mesh)
        check_batch_size(cfg.data.batch_size, self.mesh)
        tx, schedule = make_optimizer(cfg.optim, total_steps)
        self.learning_rates = [float(schedule(i)) for i in range(total_steps)]
        self.state, shardings = init_state(cfg.model, tx, self.mesh, cfg.train.seed)
        self.initial_params = jax.device_get(self.state.params)
        with activate(self.mesh):
            train_step = compile_train_step(cfg, tx, schedule, shardings, self.mesh)
            self.batch = shard_batch(batch, self.mesh)
            start = time.perf_counter()
            compiled = train_step.lower(self.state, self.batch).compile()
            self.compile_seconds = time.perf_counter() - start
        self.step_fn = compiled
        memory = compiled.memory_analysis()
        self.compiled_bytes = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )

    def step(self):
        self.state, metrics = self.step_fn(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return metrics["loss"]

    def run(self, count: int) -> dict:
        return measure_steps(self.step, count)

    def device_peak_bytes(self) -> int | None:
        """The largest `peak_bytes_in_use` over the mesh's devices (None on the CPU)."""
        stats = [d.memory_stats() for d in self.mesh.devices.flat]
        peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
        return max(peaks) if peaks else None


def torch_reference(cfg: Config):
    """The `jaxlm.bench.torch_gpt` module, once the config is one it can train; a one-line error
    when torch is missing or the model has features the reference lacks."""
    if jax.default_backend() != "cpu" or cfg.model.dtype not in TORCH_DTYPES:
        raise ConfigError(
            "--reference torch compares training on the CPU: run with JAX_PLATFORMS=cpu and "
            "model.dtype=float32 or bfloat16, or use --reference none"
        )
    if cfg.optim.optimizer != "adamw":
        raise ConfigError(
            f"--reference torch trains with AdamW, not optim.optimizer={cfg.optim.optimizer}; "
            "use --reference none"
        )
    if cfg.train.label_smoothing or cfg.train.z_loss:
        raise ConfigError(
            "--reference torch trains on plain cross-entropy: set train.label_smoothing=0 and "
            "train.z_loss=0, or use --reference none"
        )
    try:
        torch_gpt = importlib.import_module("jaxlm.bench.torch_gpt")
    except ImportError:
        raise JaxlmError(
            "--reference torch needs PyTorch: pip install 'jaxlm[reference]' "
            "(or use --reference none)"
        ) from None
    try:
        torch_gpt.GPTConfig.from_model_config(cfg.model)
    except ValueError as e:
        raise ConfigError(f"--reference torch: {e} (or use --reference none)") from None
    return torch_gpt


def warm_up(runner, warmup: int) -> list[float]:
    """`warmup` steps, then one more at a time while the last one faulted `SETTLED_FAULTS`
    pages in or more, at most `EXTRA_WARMUP` of them: on the CPU a large model's heap grows for
    a few steps (GPT-2 small with its layers unrolled: 284,000 faults per step after 2 steps,
    none after 4). Returns the warm-up steps' losses."""
    if warmup == 0:
        return []
    block = runner.run(warmup)
    losses = block["losses"]
    for _ in range(EXTRA_WARMUP):
        if block["faults"][-1] < SETTLED_FAULTS:
            break
        block = runner.run(1)
        losses += block["losses"]
    return losses


def time_steps(runners: list, steps: int, warmup: int) -> dict[str, dict]:
    """Per runner: its warm-up (`warm_up`), then `steps` timed steps in turns of BLOCK. Returns
    per runner and step the loss (warm-up steps first), wall and CPU seconds and page faults,
    the largest peak RSS of a block (bytes) and the number of warm-up steps."""
    results = {}
    for runner in runners:
        losses = warm_up(runner, warmup)
        results[runner.name] = {"losses": losses, "warmup": len(losses)}
        results[runner.name].update(times=[], cpu=[], faults=[], rss=0)
    for start in range(0, steps, BLOCK):
        for runner in runners:
            block, out = runner.run(min(BLOCK, steps - start)), results[runner.name]
            for key in ("losses", "times", "cpu", "faults"):
                out[key] += block[key]
            out["rss"] = max(out["rss"], block["rss"])
    return results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine(devices: list) -> dict:
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return {
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "cpu": cpu_model(),
        "cpu_threads": threads(),
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_benchmark(
    cfg: Config,
    *,
    steps: int = 20,
    warmup: int = 3,
    reference: str = "none",
    config_name: str = "",
    profile: str = "",
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Benchmark the config's train step (and the reference); returns a JSON-ready report.
    `profile`: a folder for a JAX profiler trace of `PROFILED_STEPS` more jaxlm steps, whose
    costliest operations the report lists."""
    if cfg.model.family != "gpt":
        raise ConfigError(
            f"config key 'model.family': bench times the causal-LM step of 'gpt', "
            f"not {cfg.model.family!r}"
        )
    if steps < 1 or warmup < 0:
        raise ConfigError("--steps must be >= 1 and --warmup >= 0")
    torch_gpt = torch_reference(cfg) if reference == "torch" else None
    load_start = load_average()
    devices = jax.devices()
    info = machine(devices)
    if info["platform"] == "cpu":
        log("measuring the CPU matmul ceiling")
        dtype = cfg.model.dtype
        peak = {
            "flops_per_second": matmul_ceiling(**CEILING, dtype=cfg.model.compute_dtype),
            "source": "measured: best of {repeats} {dtype} jnp.dot of {size}x{size} matrices, "
            "float32 accumulation".format(**CEILING, dtype=dtype),
        }
    else:
        per_chip = peak_flops(info["device_kind"])
        peak = {
            "flops_per_second": per_chip and per_chip * len(devices),
            "source": f"datasheet dense bf16 peak x {len(devices)} device(s)"
            if per_chip
            else f"unknown device kind {info['device_kind']!r}: no MFU",
        }
    batch = random_batch(cfg)
    total_steps = warmup + EXTRA_WARMUP + steps
    log("compiling the jaxlm train step")
    runners = [JaxlmRunner(cfg, batch, total_steps)]
    if torch_gpt is not None:
        jaxlm = runners[0]
        runners.append(TorchProcess(cfg, batch, jaxlm.initial_params, jaxlm.learning_rates))
    log(f"timing {warmup} warm-up (more while the heap grows) and {steps} steps per framework")
    try:
        timings = time_steps(runners, steps, warmup)
    finally:
        for runner in runners[1:]:
            runner.close()
    if profile:
        log(f"tracing {PROFILED_STEPS} more jaxlm steps into {profile}")
        with jax.profiler.trace(profile):
            for step in range(PROFILED_STEPS):
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    runners[0].step()

    flops = model_flops(cfg.model, cfg.data.seq_len)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    results = []
    for runner in runners:
        t = timings[runner.name]
        median = statistics.median(t["times"])
        tokens_per_second = tokens / median
        achieved = flops.per_token * tokens_per_second
        device_bytes = runner.device_peak_bytes()
        results.append(
            {
                "name": runner.name,
                "compile_seconds": runner.compile_seconds,
                "step_seconds_median": median,
                "step_seconds_p90": _percentile(t["times"], 90),
                "step_seconds_min": min(t["times"]),
                "cpu_seconds_per_step": statistics.median(t["cpu"]),
                "tokens_per_second": tokens_per_second,
                "model_flops_per_second": achieved,
                "mfu": achieved / peak["flops_per_second"] if peak["flops_per_second"] else None,
                "memory_bytes": device_bytes if device_bytes is not None else t["rss"],
                "memory_kind": "device peak_bytes_in_use"
                if device_bytes is not None
                else "process peak RSS",
                "compiled_step_bytes": getattr(runner, "compiled_bytes", None),
                "page_faults_per_step": statistics.median(t["faults"]),
                "warmup_steps": t["warmup"],
                "losses": t["losses"],
            }
        )
    report = {
        "config": config_name,
        "model": {
            "layers": cfg.model.num_layers,
            "embed_dim": cfg.model.embed_dim,
            "heads": cfg.model.num_heads,
            "mlp_dim": cfg.model.mlp_dim,
            "vocab_size": cfg.model.vocab_size,
            "dtype": cfg.model.dtype,
            "attention_backend": cfg.model.attention_backend,
            "remat_policy": cfg.model.remat_policy,
        },
        "batch_size": cfg.data.batch_size,
        "seq_len": cfg.data.seq_len,
        "tokens_per_step": tokens,
        "steps": steps,
        "warmup": warmup,
        "flops_per_token": flops.per_token,
        "arithmetic_params": flops.arithmetic_params,
        "attention_flops_per_token": flops.attention_per_token,
        "flops_convention": "6N + 12*L*H*Q*T per token (PaLM appendix B; jaxlm.bench.flops)",
        "peak": peak,
        "machine": info,
        "load_average": {"start": load_start, "end": load_average()},
        "results": results,
    }
    if len(results) == 2:
        report["speedup_vs_reference"] = (
            results[0]["tokens_per_second"] / results[1]["tokens_per_second"]
        )
        # the fastest steps are those least slowed by other processes on a shared machine
        report["speedup_fastest_steps"] = (
            results[1]["step_seconds_min"] / results[0]["step_seconds_min"]
        )
    if profile:
        report["profile"] = {
            "folder": profile,
            "steps": PROFILED_STEPS,
            "top_operations": top_operations(profile, PROFILED_STEPS),
        }
    return report
