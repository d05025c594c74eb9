"""`jaxlm bench`: the FLOPs convention against a hand count and the traced program, the peak
table, the harness's report, the PyTorch reference training the same model alike; and the CPU
speed-ups keeping results the same (unrolled layers, fast accuracy, reused host memory)."""

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm import cli, host_memory
from jaxlm.bench.decode import CompileClock, measure
from jaxlm.bench.flops import model_flops
from jaxlm.bench.harness import EXTRA_WARMUP, SETTLED_FAULTS, run_benchmark, warm_up
from jaxlm.bench.peaks import matmul_ceiling, peak_flops
from jaxlm.cli.bench import batch_sizes
from jaxlm.config import load_config
from jaxlm.errors import JaxlmError
from jaxlm.models import build_model, init_params
from jaxlm.train.aot import matmul_flops, trace_train_step
from jaxlm.train.losses import predicts_target

# TINY_MODEL: 2 layers, embed 32, 4 heads, mlp 64, vocab 100 (padded to 128), seq_len 16.
TINY = [*TINY_MODEL, "data.batch_size=8", "model.attention_backend=reference"]
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="the PyTorch reference needs torch (pip install -e '.[reference]')",
)


def test_flops_per_token_by_hand():
    cfg = load_config(None, TINY)
    layers, embed, mlp, padded_vocab, length = 2, 32, 64, 128, 16
    per_layer = (
        4 * (embed * embed + embed)  # query, key, value, out kernels and biases
        + 2 * 2 * embed  # two LayerNorms, scale and bias
        + (embed * mlp + mlp)
        + (mlp * embed + embed)  # MLP in and out
    )
    n = layers * per_layer + 2 * embed + padded_vocab * embed  # final norm, tied output head
    flops = model_flops(cfg.model, cfg.data.seq_len)
    assert flops.arithmetic_params == n
    assert flops.attention_per_token == 12 * layers * embed * length  # heads * head_dim = embed
    assert flops.per_token == 6 * n + 12 * layers * embed * length


def test_flops_match_the_matmuls_of_the_traced_train_step():
    """The program's dot_generals do 6 FLOPs per kernel weight and token, plus attention; only
    biases and norms (elementwise work, counted by the convention) are not matmuls."""
    cfg = load_config(None, TINY)
    traced, _ = trace_train_step(cfg)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    elementwise = 2 * (4 * 32 + 2 * 2 * 32 + 64 + 32) + 2 * 32  # biases and norm parameters
    expected = (model_flops(cfg.model, cfg.data.seq_len).per_token - 6 * elementwise) * tokens
    assert matmul_flops(traced.jaxpr.jaxpr) == expected


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("cpu", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_by_device_kind(kind, peak):
    assert peak_flops(kind) == peak


def test_matmul_ceiling_is_measured():
    assert 1e8 < matmul_ceiling(size=256, repeats=2) < 1e14


@needs_torch
def test_bench_compiles_cold_even_with_a_persistent_compilation_cache(tmp_path):
    """With JAX's persistent cache set up (as JAX_COMPILATION_CACHE_DIR does), `jaxlm bench`
    neither reads nor writes it: its compile time is that of a first run."""
    cache = tmp_path / "xla-cache"
    settings = {
        "jax_compilation_cache_dir": str(cache),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_enable_compilation_cache": True,
    }
    previous = {option: getattr(jax.config, option) for option in settings}
    events = []

    def listen(event, **_):
        events.append(event)

    jax.monitoring.register_event_listener(listen)
    try:
        for option, value in settings.items():
            jax.config.update(option, value)
        assert cli.main(["bench", "demo", *TINY, "--steps", "1", "--warmup", "0"]) == 0
    finally:
        jax.monitoring.unregister_event_listener(listen)
        for option, value in previous.items():
            jax.config.update(option, value)
    used = {"compile_requests_use_cache", "cache_hits", "cache_misses"}
    assert not [event for event in events if event.rsplit("/", 1)[-1] in used]
    assert not cache.exists() or not any(cache.iterdir())


def test_bench_command_with_the_torch_reference(tmp_path, capsys):
    """The report's shape; and the reference, from the same initial weights on the same batch
    with the same AdamW and schedule, has the same falling loss step for step."""
    path = tmp_path / "bench.json"
    overrides = [*TINY, "optim.warmup_steps=0", "optim.learning_rate=1e-2"]
    argv = ["bench", "demo", *overrides, "--steps", "3", "--warmup", "2", "--json", str(path)]
    assert cli.main([*argv, "--reference", "torch"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "MFU" in out and "jaxlm / pytorch tokens/s" in out
    report = json.loads(path.read_text())
    assert report["tokens_per_step"] == 8 * 16
    assert report["peak"]["flops_per_second"] > 0  # the measured CPU ceiling
    assert report["speedup_vs_reference"] > 0
    jaxlm, torch = report["results"]
    fastest = torch["step_seconds_min"] / jaxlm["step_seconds_min"]
    assert report["speedup_fastest_steps"] == pytest.approx(fastest)
    assert (jaxlm["name"], torch["name"]) == ("jaxlm", "pytorch")
    assert jaxlm["compile_seconds"] > 0 and torch["compile_seconds"] is None
    for result in (jaxlm, torch):
        assert 2 <= result["warmup_steps"] <= 2 + EXTRA_WARMUP
        assert len(result["losses"]) == result["warmup_steps"] + 3
        assert 0 < result["step_seconds_min"] <= result["step_seconds_median"]
        assert result["step_seconds_median"] <= result["step_seconds_p90"]
        assert result["cpu_seconds_per_step"] > 0 and result["page_faults_per_step"] >= 0
        flops_per_second = report["flops_per_token"] * result["tokens_per_second"]
        assert result["model_flops_per_second"] == pytest.approx(flops_per_second)
        mfu = flops_per_second / report["peak"]["flops_per_second"]
        assert result["mfu"] == pytest.approx(mfu)
        assert result["memory_kind"] == "process peak RSS" and result["memory_bytes"] > 0
    assert jaxlm["losses"][-1] < jaxlm["losses"][0] - 0.1
    steps = min(len(torch["losses"]), len(jaxlm["losses"]))  # warm-ups may differ in length
    np.testing.assert_allclose(torch["losses"][:steps], jaxlm["losses"][:steps], rtol=1e-4)


class ScriptedRunner:
    """A runner whose steps fault the given numbers of pages in, then none."""

    def __init__(self, faults: list[int]):
        self.faults, self.steps = list(faults), 0

    def run(self, count: int) -> dict:
        self.steps += count
        faults = [self.faults.pop(0) if self.faults else 0 for _ in range(count)]
        return {"losses": [1.0] * count, "faults": faults}


@pytest.mark.parametrize(
    "faults, steps",
    [
        ([0, 0, 0], 3),  # settled within the warm-up asked for
        ([90_000, 90_000, 50_000, SETTLED_FAULTS, SETTLED_FAULTS - 1], 5),  # until one is under
        ([90_000] * 30, 3 + EXTRA_WARMUP),  # never settles: at most EXTRA_WARMUP more
    ],
)
def test_warm_up_goes_on_while_the_heap_grows(faults, steps):
    runner = ScriptedRunner(faults)
    assert len(warm_up(runner, 3)) == steps and runner.steps == steps
    assert warm_up(ScriptedRunner(faults), 0) == []


@needs_torch
def test_bfloat16_against_pytorch_autocast(tmp_path):
    """bfloat16 compute: the ceiling is measured in bfloat16 and the reference trains under
    torch.autocast, in a process of its own; the losses agree to bfloat16 precision."""
    cfg = load_config("demo", [*TINY, "optim.warmup_steps=0", "optim.learning_rate=1e-2"])
    cfg.model.dtype = "bfloat16"
    report = run_benchmark(cfg, steps=2, warmup=2, reference="torch")
    assert "bfloat16 jnp.dot" in report["peak"]["source"]
    jaxlm, torch = report["results"]
    assert jaxlm["losses"][-1] < jaxlm["losses"][0] - 0.1
    steps = min(len(torch["losses"]), len(jaxlm["losses"]))
    np.testing.assert_allclose(torch["losses"][:steps], jaxlm["losses"][:steps], rtol=1e-2)


@needs_torch
def test_a_failing_reference_process_is_a_one_line_error():
    from jaxlm.bench.harness import random_batch
    from jaxlm.bench.torch_process import TorchProcess

    cfg = load_config(None, TINY)
    with pytest.raises(JaxlmError, match=r"reference process failed: KeyError: 'decoder'"):
        TorchProcess(cfg, random_batch(cfg), {}, [1e-3])


def test_missing_torch_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jaxlm.bench.torch_gpt", None)
    with pytest.raises(JaxlmError, match=r"pip install 'jaxlm\[reference\]'"):
        run_benchmark(load_config(None, TINY), steps=1, warmup=0, reference="torch")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["model.family=bert", "model.heads=[mlm]"], "bench times the causal-LM step"),
        (["model.dtype=float16", "--reference", "torch"], "model.dtype=float32 or bfloat16"),
        (["optim.optimizer=lion", "--reference", "torch"], "not optim.optimizer=lion"),
        (["train.z_loss=1e-4", "--reference", "torch"], "trains on plain cross-entropy"),
        (["--decode", "--new-tokens", "1"], "--decode needs --new-tokens >= 2"),
        (["--decode", "--prompt-len", "10"], "exceeds the model's max_len=16"),
        (["model.family=bert", "model.heads=[mlm]", "--decode"], "--decode times 'gpt'"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message, capsys):
    assert cli.main(["bench", "demo", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("cached", [True, False])
def test_decode_measure_takes_out_prefill_and_compilation(cached):
    """A fake `generate` of n tokens: 30 ms of prefill and 5 ms per token, plus a jitted function
    compiled on its first call (per length) when cached, on every call otherwise."""
    compiled = {}

    def run(n):
        if not cached or n not in compiled:
            compiled[n] = jax.jit(lambda x: jnp.cumsum(x * n))
        compiled[n](jnp.ones(64)).block_until_ready()
        time.sleep(0.030 + 0.005 * n)

    timing = measure(run, new_tokens=9, repeats=5, clock=CompileClock())
    assert timing["latency_s"] == pytest.approx(0.005, abs=0.002)
    if cached:  # a fresh function each call also costs dispatch time that no event reports
        assert timing["first_token_s"] == pytest.approx(0.035, abs=0.005)
    assert timing["compile_s"] > 0
    assert (timing["recompile_s"] > 0) == (not cached)


@pytest.mark.parametrize("text", ["1,0", "", "1,,8", "a"])
def test_bad_batch_sizes_are_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated list like 1,8,64"):
        batch_sizes(text)
    assert batch_sizes("1,8,64") == [1, 8, 64]


FREED_MEMORY_PROBE = """
import ctypes, resource, sys, threading
from jaxlm.host_memory import keep_freed_memory
mode, size, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
applied = mode != "default" and keep_freed_memory(one_arena=mode == "keep")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
faults = []
def step():  # allocate, fill and free a buffer, as a step's temporaries are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, ctypes.c_size_t(size))
    libc.free(ctypes.c_void_p(buffer))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
for _ in range(3):
    if where == "main":
        step()
    else:
        thread = threading.Thread(target=step)
        thread.start()
        thread.join()
print(applied, *faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(
    "mode, size, where",
    [
        ("keep", 64 << 20, "worker"),  # jaxlm: XLA's runtime allocates from a worker thread
        ("keep", 2304 << 20, "worker"),  # more than a 2 GiB trim threshold would keep
        ("keep-arenas", 64 << 20, "main"),  # the PyTorch reference: its main thread allocates
    ],
    ids=["jaxlm-64MiB", "jaxlm-2.25GiB", "reference-64MiB"],
)
def test_keep_freed_memory_reuses_pages_across_steps(mode, size, where):
    """A buffer allocated and freed per step: mapped and faulted in anew each time by default
    (one fault per 4 KiB page), reused from the second step once kept: with jaxlm's settings
    (one arena) from a worker thread, also beyond 2 GiB (GPT-2 small's step allocates 2.5 GB);
    with the PyTorch reference's (per-thread arenas left alone) from the main thread."""
    runs = {
        run: subprocess.run(
            [sys.executable, "-c", FREED_MEMORY_PROBE, run, str(size), where],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for run in (mode, "default")
    }
    pages = size // 4096
    kept, default = ([int(x) for x in runs[run][1:]] for run in (mode, "default"))
    assert runs[mode][0] == "True" and runs["default"][0] == "False"
    assert min(default) >= pages and kept[0] >= pages
    assert max(kept[1:]) < pages // 100


@pytest.mark.parametrize("platforms, cpu", [("cpu", True), ("tpu", False), ("cuda,cpu", False)])
def test_host_memory_settings_only_for_the_cpu(monkeypatch, platforms, cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host_memory.jax_will_use_cpu() is cpu
    assert host_memory.keep_freed_memory_on_cpu() is False  # JAX is already running here


def test_unrolled_layers_compute_the_same_gradients():
    """model.scan_unroll=0 (no layer loop) gives the scanned stack's loss and gradients."""
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 100)
    configs = [load_config(None, [*TINY, f"model.scan_unroll={n}"]).model for n in (1, 0)]
    params = jax.jit(lambda key: nn.unbox(init_params(configs[0], key)))(jax.random.key(0))
    models = [build_model(cfg) for cfg in configs]
    results = [
        jax.jit(jax.value_and_grad(lambda p, m=model: m.apply(p, tokens).std()))({"params": params})
        for model in models
    ]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *results)


def test_predicts_target_is_argmax_with_ties():
    """The fast accuracy test agrees with NumPy's argmax (first maximum wins), ties included."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 64, 50)).astype(np.float32)
    logits[:, :32, 7] = logits[:, :32, 20] = 9.0  # a two-way tie for the maximum
    logits[..., 45:] = np.finfo(np.float32).min  # padded vocabulary rows
    targets = rng.choice([7, 20, 3, 49], size=(4, 64))
    expected = np.argmax(logits, axis=-1) == targets
    got = jax.jit(predicts_target)(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_array_equal(got, expected)
    assert expected[:, :32].any() and not expected[:, :32][targets[:, :32] == 20].any()


def test_the_chat_benchmark_times_each_turn_and_checks_both_ways_reply_alike(capsys):
    """A small run of benchmarks/chat.py: every turn after the first reuses the conversation so
    far (the script exits where the cache's replies and `generate`'s differ)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import chat

    rows = chat.main(
        ["--config", "demo", "--max-len", "64", "--first", "10", "--turns", "3"]
        + ["--turn-tokens", "5", "--new-tokens", "4"]
    )
    assert [row["tokens"] for row in rows] == [10, 19, 28]
    assert [row["reused"] for row in rows] == [0, 14, 23]  # all before the new turn
    assert "| 3 | 28 | 23 |" in capsys.readouterr().out
