"""Ahead-of-time compilation of the train step: FLOPs against the architecture's arithmetic,
memory against the sharding report, and one-line errors."""

import importlib.util

import jax
import pytest

from jaxlm import cli
from jaxlm.bench.flops import model_flops, step_model_flops
from jaxlm.config import load_config
from jaxlm.sharding_report import abstract_mesh, parse_mesh, state_layout
from jaxlm.train.aot import compile_report, matmul_flops, topology_devices, trace_train_step

# demo's widths (embed 256, mlp 1024, vocab 4096, 4 heads) on shorter rows
D, F, V = 256, 1024, 4096
SMALL = ["data.batch_size=8", "data.seq_len=64"]


def _expected_flops(layers: int, rows: int, length: int) -> int:
    """Matmul FLOPs of one step, from the architecture: 2 per multiply-add forward, twice that
    backward. Per token and layer: q, k, v, out (4 d^2) and MLP (2 d f) weights; attention
    scores and weighted values (2 * 2 * length * d); the tied output projection (V d)."""
    weights = layers * (4 * D * D + 2 * D * F) + V * D
    return rows * length * (6 * weights + 12 * layers * length * D)


def test_xla_flops_of_a_one_layer_step_match_the_arithmetic():
    # XLA counts a loop body once, so with one layer its count covers the whole step.
    cfg = load_config("demo", [*SMALL, "model.num_layers=1", "mesh.data=1"])
    report = compile_report(cfg, jax.devices()[:1])
    expected = _expected_flops(1, 8, 64)
    assert report.program_flops == expected
    # Elementwise work (norms, GELU, softmax, AdamW) comes on top of the matmuls.
    assert 1.0 < report.xla_flops / expected < 1.1
    assert 0.99 < report.model_flops / expected < 1.01


def test_program_flops_count_every_scanned_layer():
    traced, _ = trace_train_step(load_config("demo", SMALL), jax.devices())
    assert matmul_flops(traced.jaxpr.jaxpr) == _expected_flops(4, 8, 64)
    per_token = model_flops(load_config("demo").model, 64).per_token
    assert 0.99 < per_token * 8 * 64 / _expected_flops(4, 8, 64) < 1.01


@pytest.mark.parametrize("task", ["seq2seq", "span_corruption"])
def test_encoder_decoder_model_flops_match_the_program(task):
    """Encoder-decoder model FLOPs count each side's parameters over its own tokens: 64 source
    tokens, and 64 (seq2seq) or 14 (span corruption) target tokens a row; the traced program's
    matmuls agree but for the norm scales the convention counts."""
    cfg = load_config("demo", [*SMALL, "model.family=seq2seq", f"data.task={task}"])
    traced, _ = trace_train_step(cfg, jax.devices())
    assert 0.99 < step_model_flops(cfg) / matmul_flops(traced.jaxpr.jaxpr) < 1.01


def test_compile_command_prints_flops_and_memory(capsys):
    mesh = "data=2,fsdp=2,tensor=2"
    assert cli.main(["compile", "demo", *SMALL, "--mesh", mesh]) == 0
    out = capsys.readouterr().out
    assert f"mesh {mesh} on 8 cpu devices" in out
    assert "XLA cost analysis" in out and "6N + attention" in out
    rows = {line[:24].strip(): line for line in out.splitlines()}
    # Arguments are the state's shard (as the sharding report computes it), the step counter
    # and the batch's shard: 5 arrays of 4-byte values, 2 of 8 rows per data*fsdp shard.
    cfg = load_config("demo", SMALL)
    state = state_layout(cfg, abstract_mesh(parse_mesh(mesh))).totals()["total"][1]
    arguments = state + 4 + 5 * 4 * 2 * 64
    assert rows["arguments"].endswith(f"({arguments:,})")
    for row in ("outputs", "reusing arguments", "temporaries", "generated code", "total"):
        assert row in rows


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxlm: error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_a_one_line_error(capsys):
    assert "data*fsdp*tensor = 3" in _error(capsys, ["compile", "demo", "--mesh", "data=3"])
    assert "--mesh" in _error(capsys, ["compile", "demo", "--mesh", "data:2"])
    assert "data.task" in _error(capsys, ["compile", "bert-base"])
    assert "data.batch_size" in _error(capsys, ["compile", "demo", "data.batch_size=4"])


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu installed")
def test_a_step_is_traced_for_its_devices_not_for_the_hosts_default_backend(monkeypatch):
    """A host whose default backend is a GPU compiling for CPU devices (or a CPU host compiling
    for a TPU slice) traces the step with the devices' attention and matmul paths."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = load_config(
        "demo", ["data.batch_size=8", "model.num_layers=1", "mesh.data=1", "model.dtype=bfloat16"]
    )
    traced, _ = trace_train_step(cfg, jax.devices("cpu")[:1])
    jaxpr = str(traced.jaxpr)
    assert "custom_vjp_call" in jaxpr  # the CPU's bfloat16 products
    assert "concatenate[dimension=1]" in jaxpr  # and its causal query blocks (2 of 64 tokens)


def test_topology_without_libtpu_says_how_to_get_it(capsys):
    err = _error(capsys, ["compile", "demo", "--topology", "v5e:2x2"])
    assert "libtpu" in err and "pip install" in err


def test_topology_compiles_for_a_tpu_slice_on_any_host(capsys):
    pytest.importorskip("libtpu")
    assert "--topology 'v5e:3x3'" in _error(capsys, ["compile", "demo", "--topology", "v5e:3x3"])
    cfg = load_config("demo", [*SMALL, "model.num_layers=1", "mesh.data=2", "mesh.fsdp=2"])
    report = compile_report(cfg, topology_devices("v5e:2x2"))
    assert (report.devices, report.device_kind) == (4, "TPU v5 lite")
    pallas = load_config("demo", ["model.attention_backend=auto", "mesh.data=4"])
    assert "pallas_call" in str(trace_train_step(pallas, topology_devices("v5e:2x2"))[0].jaxpr)
    assert report.program_flops == _expected_flops(1, 8, 64)
    assert 1.0 < report.xla_flops * 4 / report.program_flops < 1.1


@pytest.mark.parametrize(
    "task",
    [
        ["model.family=bert", "model.heads=[mlm,nsp]", "data.task=masked_lm"],
        ["model.family=bert", "model.heads=[classifier]", "data.task=classification"],
        ["model.family=seq2seq", "data.task=seq2seq"],
        ["model.family=seq2seq", "data.task=span_corruption"],
    ],
)
def test_every_task_compiles(capsys, task):
    assert cli.main(["compile", "demo", *SMALL, *task]) == 0
    assert "XLA cost analysis" in capsys.readouterr().out


@pytest.mark.parametrize(
    "task, target", [("seq2seq", 64), ("seq2seq", 20), ("span_corruption", 14)]
)
def test_seq2seq_batches_have_source_and_target_lengths(task, target):
    """Sources of seq_len tokens; targets of data.target_len, else seq_len (seq2seq) or the
    longest span-corruption target (64 source tokens: 70-token chunks, 10 noise tokens in 3
    spans, + 3 sentinels and EOS)."""
    from jaxlm.parallel import make_mesh
    from jaxlm.train.aot import abstract_batch

    overrides = [*SMALL, "model.family=seq2seq", f"data.task={task}"]
    if target == 20:
        overrides.append("data.target_len=20")
    cfg = load_config("demo", overrides)
    batch = abstract_batch(cfg, make_mesh(cfg.mesh))
    assert batch["source"].shape == batch["source_segments"].shape == (8, 64)
    for key in ("target_inputs", "target_segments", "targets", "weights"):
        assert batch[key].shape == (8, target), key
