"""Peak dense bf16 FLOP/s per chip, found from `device_kind`, and a matmul ceiling measured on
the CPU (which has no meaningful datasheet peak for XLA)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# (lower-case substring of jax.devices()[0].device_kind, peak dense bf16 FLOP/s per chip);
# the first match wins, so more specific names come first. NVIDIA's datasheets give bf16 Tensor
# Core FLOPS "with sparsity" (2:4 structured): the dense peak is half of that figure.
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),  # NVIDIA H100 datasheet: 1,513 TFLOPS with sparsity
    ("h100 nvl", 835e12),  # NVIDIA H100 NVL datasheet: 1,671 TFLOPS with sparsity
    ("h100", 989e12),  # H100 SXM ("NVIDIA H100 80GB HBM3"): 1,979 TFLOPS with sparsity
    ("h200 nvl", 835e12),  # NVIDIA H200 datasheet, NVL: 1,671 TFLOPS with sparsity
    ("h200", 989e12),  # NVIDIA H200 datasheet, SXM: 1,979 TFLOPS with sparsity
    ("a100", 312e12),  # NVIDIA A100 datasheet: 312 TFLOPS dense (SXM and PCIe)
    ("tpu v4 lite", None),  # v4i, an inference chip: no figure here
    ("tpu v4", 275e12),  # cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16
    ("tpu v5 lite", 197e12),  # v5e (cloud.google.com/tpu/docs/v5e): 197 TFLOPS bf16
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),  # v5p, device_kind "TPU v5" (cloud.google.com/tpu/docs/v5p): 459
    ("tpu v6 lite", 918e12),  # v6e Trillium (cloud.google.com/tpu/docs/v6e): 918 TFLOPS bf16
    ("tpu v6e", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The table's peak for a device kind such as "NVIDIA H100 80GB HBM3"; None if unknown."""
    kind = device_kind.lower()
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def matmul_ceiling(size: int = 2048, repeats: int = 5, dtype=jnp.float32, device=None) -> float:
    """FLOP/s of the best of `repeats` jitted `jnp.dot`s of two size x size matrices of `dtype`,
    accumulated in float32 (the form jaxlm's matmuls take)."""
    device = device or jax.devices()[0]
    a, b = (
        jax.device_put(jax.random.normal(jax.random.key(i), (size, size), dtype), device)
        for i in (0, 1)
    )
    dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
