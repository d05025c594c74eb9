"""Decoding latency of `jaxlm.generate.generate` on any device: ms per new token.

    report = decode_benchmark(load_config("gpt2-small", ["model.dtype=bfloat16"]).model, [1, 8])
    print(format_decode_report(report))  # and json.dumps(report)

Method: per batch size, one warm-up call generating N = `new_tokens` tokens and one generating 1
token, then `repeats` timed calls of each (alternating); T_N and T_1 are the medians. A call of 1
token is the prefill plus per-call overhead, so the latency per decoded token is
(T_N - T_1) / (N - 1) and tokens/s = batch / latency. `generate` is the public entry point (its
whole loop is one compiled function). The time JAX reports for tracing, lowering and XLA
compilation (jax.monitoring events) is that of the warm-up calls (`compile_s`); should a timed
call compile again, its compilation is taken out of its time and reported (`recompile_s`).
Weights are random (the model's initializers); decoding is greedy and never stops early.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from jaxlm.config import ModelConfig, SampleConfig
from jaxlm.errors import ConfigError

COMPILE_EVENTS = "/jax/core/compile/"  # jaxpr tracing, lowering to MLIR, XLA compilation


class CompileClock:
    """Seconds JAX spent tracing and compiling, from jax.monitoring's time-span events."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        jax.monitoring.register_event_time_span_listener(self._record)

    def _record(self, event: str, start_time: float, end_time: float, **_) -> None:
        if event.startswith(COMPILE_EVENTS):
            self.spans.append((start_time, end_time))

    def pop(self) -> float:
        """Total time covered by the spans recorded since the last call (overlaps counted once)."""
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.spans):
            total += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        self.spans.clear()
        return total


def timed(fn: Callable[[], object], clock: CompileClock) -> tuple[float, float]:
    """(wall seconds less compilation, compilation seconds) of one call."""
    clock.pop()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    compile_s = clock.pop()
    return wall - compile_s, compile_s


def measure(
    run: Callable[[int], object], new_tokens: int, repeats: int, clock: CompileClock
) -> dict[str, float]:
    """Per-token decode latency of `run(n)` (generate n tokens) by the T_N - T_1 difference;
    `compile_s`: tracing and compilation in the first calls (one of each length),
    `recompile_s`: any in the timed calls, taken out of their times (0 when the cache works)."""
    compile_s = sum(timed(lambda n=n: run(n), clock)[1] for n in (new_tokens, 1))
    long, short, recompiles = [], [], []
    for _ in range(repeats):
        for n, times in ((new_tokens, long), (1, short)):
            seconds, recompile_s = timed(lambda n=n: run(n), clock)
            times.append(seconds)
            recompiles.append(recompile_s)
    t_long, t_short = statistics.median(long), statistics.median(short)
    return {
        "latency_s": (t_long - t_short) / (new_tokens - 1),
        "first_token_s": t_short,
        "compile_s": compile_s,
        "recompile_s": sum(recompiles),
    }


def greedy_decoder(cfg: ModelConfig, params, prompts: list[list[int]]) -> Callable[[int], list]:
    """`run(n)`: the prompts' greedy continuations of exactly n tokens through `generate`."""
    from jaxlm.generate import generate

    def run(n: int) -> list[list[int]]:
        sample = SampleConfig(max_new_tokens=n, temperature=0.0)
        return generate(cfg, params, prompts, sample, eos_id=-1)

    return run


def decode_benchmark(
    cfg: ModelConfig,
    batch_sizes: list[int],
    *,
    prompt_len: int = 32,
    new_tokens: int = 64,
    repeats: int = 5,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Greedy decoding latency of the config's GPT per batch size; a JSON-ready report."""
    from jaxlm.models import init_params

    if cfg.family != "gpt":
        raise ConfigError(f"config key 'model.family': --decode times 'gpt', not {cfg.family!r}")
    if new_tokens < 2 or prompt_len < 1 or repeats < 1 or min(batch_sizes, default=0) < 1:
        raise ConfigError(
            "--decode needs --new-tokens >= 2, --prompt-len >= 1, --repeats >= 1 and batch "
            "sizes >= 1"
        )
    if prompt_len + new_tokens > cfg.max_len:
        raise ConfigError(
            f"--prompt-len + --new-tokens = {prompt_len + new_tokens} exceeds the model's "
            f"max_len={cfg.max_len}"
        )
    params = jax.jit(lambda key: nn.unbox(init_params(cfg, key)))(jax.random.key(seed))
    clock, rng = CompileClock(), np.random.default_rng(seed)
    results = []
    for batch in batch_sizes:
        prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
        log(f"decoding batch {batch}")
        timing = measure(greedy_decoder(cfg, params, prompts), new_tokens, repeats, clock)
        results.append({"batch": batch, **timing, "tokens_per_second": batch / timing["latency_s"]})
    device = jax.devices()[0]
    return {
        "model": {
            "layers": cfg.num_layers,
            "embed_dim": cfg.embed_dim,
            "heads": cfg.num_heads,
            "vocab_size": cfg.vocab_size,
            "dtype": cfg.dtype,
            "param_dtype": cfg.param_dtype,
        },
        "device": {"platform": device.platform, "device_kind": device.device_kind},
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "method": "(T_N - T_1) / (N - 1) per token, medians of alternating calls; greedy",
        "results": results,
    }


def format_decode_report(report: dict) -> str:
    """The decode report as a short text table."""
    m, device = report["model"], report["device"]
    lines = [
        f"gpt {m['layers']} layers x {m['embed_dim']}, {m['heads']} heads, vocab "
        f"{m['vocab_size']}, compute {m['dtype']}, weights {m['param_dtype']}; prompt "
        f"{report['prompt_len']} tokens, {report['new_tokens']} new tokens, greedy",
        f"device: {device['device_kind']} ({device['platform']})",
        "",
        f"{'batch':>5}{'ms/token':>10}{'tokens/s':>11}{'T_1 ms':>9}{'compile s':>11}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['batch']:>5}{1e3 * r['latency_s']:>10.3f}{r['tokens_per_second']:>11,.0f}"
            f"{1e3 * r['first_token_s']:>9.1f}{r['compile_s']:>11.2f}"
        )
    lines.append(
        "(ms/token: (T_N - T_1) / (N - 1); T_1: prefill and per-call overhead; compile s: the "
        "first calls' tracing and compilation)"
    )
    recompiled = sum(r["recompile_s"] for r in report["results"])
    if recompiled:
        lines.append(f"warning: timed calls compiled again for {recompiled:.2f} s (excluded)")
    return "\n".join(lines)
