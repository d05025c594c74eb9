"""Training benchmarks: model FLOPs, device peaks, and a steady-state step-time harness with an
optional side-by-side PyTorch reference (`jaxlm.bench.torch_gpt`, which needs torch)."""

from jaxlm.bench.flops import ModelFlops, model_flops
from jaxlm.bench.harness import run_benchmark
from jaxlm.bench.peaks import PEAK_BF16_FLOPS, matmul_ceiling, peak_flops
from jaxlm.bench.report_text import format_report

__all__ = [
    "PEAK_BF16_FLOPS",
    "ModelFlops",
    "format_report",
    "matmul_ceiling",
    "model_flops",
    "peak_flops",
    "run_benchmark",
]
