"""Ahead-of-time compilation of the train step, for local devices or a named TPU topology.

    report = compile_report(load_config("demo"))
    print(report.summary())

The state and batch are shapes with shardings (`jax.ShapeDtypeStruct`), so nothing is allocated:
a TPU pod slice's step compiles on a CPU-only machine when libtpu is installed.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass

import jax
from jax.extend.core import jaxprs_in_params

from jaxlm.bench.flops import step_model_flops
from jaxlm.config import Config, check_task
from jaxlm.data.tasks import BATCH_FEATURES, target_length
from jaxlm.errors import JaxlmError
from jaxlm.layers.platform import tracing_for
from jaxlm.parallel import activate, batch_sharding, check_batch_size, make_mesh
from jaxlm.sharding_report import format_bytes, mesh_text
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import state_shardings
from jaxlm.train.step import compile_train_step


def topology_devices(name: str) -> list:
    """Compile-only devices of a TPU topology such as `v5e:2x2` or `v5p:2x2x2` (no TPU needed)."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(name, "tpu").devices)
    except RuntimeError as e:
        if importlib.util.find_spec("libtpu") is None:
            raise JaxlmError(
                "--topology compiles for TPUs with libtpu, which is not installed; "
                f"`pip install 'jax[tpu]=={jax.__version__}'` adds it (no TPU needed)"
            ) from None
        raise JaxlmError(f"--topology {name!r}: {str(e).splitlines()[0]}") from None


def matmul_flops(jaxpr) -> int:
    """2 * m * n * k summed over the dot_generals of a jaxpr, each scan body times its length
    (every branch of a cond counts)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in contracting)
        repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        subs = jaxprs_in_params(eqn.params)
        total += repeats * sum(matmul_flops(sub) for sub in subs)
    return total


def abstract_batch(cfg: Config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch of `data.task` the train step takes, as shapes split over the batch axes."""
    features = dict(BATCH_FEATURES[cfg.data.task])
    if cfg.data.task == "masked_lm" and not cfg.data.next_sentence:
        del features["nsp_labels"], features["nsp_weights"]
    sharding = batch_sharding(mesh)
    lengths = {"source": (cfg.data.seq_len,), "target": (target_length(cfg.data),), None: ()}
    return {
        key: jax.ShapeDtypeStruct((cfg.data.batch_size, *lengths[length]), dtype, sharding=sharding)
        for key, (dtype, length) in features.items()
    }


@dataclass(frozen=True)
class CompileReport:
    """What XLA says about one compiled train step; FLOPs and bytes as described per field."""

    device_kind: str
    devices: int
    mesh: str
    batch_shape: tuple[int, int]
    seconds: float  # tracing, lowering and compiling
    xla_flops: float  # per device, from XLA's cost analysis (a loop body counts once)
    program_flops: int  # matmuls of the traced step over all devices, scans unrolled
    model_flops: int  # 6N + attention, over all devices
    memory: object  # XLA's CompiledMemoryStats, per device

    @property
    def tokens(self) -> int:
        return math.prod(self.batch_shape)

    def summary(self) -> str:
        rows, length = self.batch_shape
        lines = [
            f"train step: {self.tokens:,} tokens ({rows} rows x {length}), mesh {self.mesh} "
            f"on {self.devices} {self.device_kind} device{'s' * (self.devices > 1)}",
            f"compiled in {self.seconds:.2f} s",
            "",
            f"{'FLOPs per step':<24}{'total':>12}{'per device':>12}{'per token':>12}",
        ]
        for name, total in (
            ("XLA cost analysis", self.xla_flops * self.devices),
            ("matmuls in the program", self.program_flops),
            ("6N + attention", self.model_flops),
        ):
            per_device, per_token = total / self.devices, total / self.tokens
            lines.append(f"{name:<24}{_si(total):>12}{_si(per_device):>12}{_si(per_token):>12}")
        lines.append("(XLA counts each loop body once, so all scanned layers count as one)")
        m = self.memory
        aliased = m.alias_size_in_bytes
        peak = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - aliased
            + m.temp_size_in_bytes
            + m.generated_code_size_in_bytes
        )
        lines += ["", "memory per device"]
        for name, count in (
            ("arguments", m.argument_size_in_bytes),
            ("outputs", m.output_size_in_bytes),
            ("  reusing arguments", aliased),
            ("temporaries", m.temp_size_in_bytes),
            ("generated code", m.generated_code_size_in_bytes),
            ("total", peak),
        ):
            lines.append(f"{name:<24}{format_bytes(count):>12}  ({count:,})")
        return "\n".join(lines)


def _si(value: float) -> str:
    """12_300_000 -> '12.30 M'."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}"
    return f"{value:.0f}"


def trace_train_step(cfg: Config, devices: list | None = None):
    """(traced step, mesh): the sharded train step traced over `devices` (default: local ones),
    with the attention and matmul paths of their platform, whatever the host's."""
    check_task(cfg)
    mesh = make_mesh(cfg.mesh, devices)
    check_batch_size(cfg.data.batch_size, mesh)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    abstract, shardings = state_shardings(cfg.model, tx, mesh)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    train_step = compile_train_step(cfg, tx, schedule, shardings, mesh)
    with activate(mesh), tracing_for(mesh.devices.flat[0].platform):
        return train_step.trace(state, abstract_batch(cfg, mesh)), mesh


def compile_report(cfg: Config, devices: list | None = None) -> CompileReport:
    """Traces, lowers and compiles the sharded train step over `devices` (default: local ones)."""
    start = time.perf_counter()
    traced, mesh = trace_train_step(cfg, devices)
    with activate(mesh):
        compiled = traced.lower().compile()
    seconds = time.perf_counter() - start
    batch_shape = (cfg.data.batch_size, cfg.data.seq_len)
    return CompileReport(
        device_kind=mesh.devices.flat[0].device_kind,
        devices=mesh.size,
        mesh=mesh_text(mesh),
        batch_shape=batch_shape,
        seconds=seconds,
        xla_flops=compiled.cost_analysis()["flops"],
        program_flops=matmul_flops(traced.jaxpr.jaxpr),
        model_flops=step_model_flops(cfg),
        memory=compiled.memory_analysis(),
    )
