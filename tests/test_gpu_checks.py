"""benchmarks/gpu_checks.sh, the one-run GPU check script, tried on the CPU with a small config:
its arguments, its refusal to run off a GPU, and the files and summary it writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_checks.sh"


def _run(*args, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env.update(PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def test_help():
    out = _run("--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: ") and out.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing OUTDIR"),
        (["a", "b"], "one OUTDIR only"),
        (["--steps", "0", "out"], "'0' is not a positive integer"),
        (["--sizes"], "--sizes needs a value"),
        (["--fast", "out"], "unknown flag '--fast'"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_status_2(args, message):
    out = _run(*args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("gpu_checks.sh: ")


def test_refuses_to_run_without_a_gpu(tmp_path):
    out = _run(str(tmp_path / "out"))
    assert out.returncode == 1
    assert out.stderr == "gpu_checks.sh: JAX runs on 'cpu', not a GPU (--allow-cpu to run anyway)\n"


def test_a_cpu_run_writes_every_report_and_the_summary(tmp_path):
    out_dir = tmp_path / "out"
    args = ["--allow-cpu", "--sizes", "demo", "--seq-len", "32", "--batch", "4", "--steps", "2"]
    out = _run(*args, str(out_dir), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = {p.name for p in out_dir.iterdir()}
    assert names == {
        "environment.txt",
        "tests.txt",
        "train-demo.json",
        "decode.json",
        "summary.md",
        "sizes.png",
    }
    assert (
        "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true"
        in (out_dir / "environment.txt").read_text()
    )
    train = json.loads((out_dir / "train-demo.json").read_text())
    assert (train["batch_size"], train["seq_len"], train["steps"]) == (4, 32, 2)
    assert train["model"]["dtype"] == "bfloat16"
    decode = json.loads((out_dir / "decode.json").read_text())
    assert [r["batch"] for r in decode["results"]] == [1, 8]
    assert decode["model"]["param_dtype"] == "bfloat16"
    summary = (out_dir / "summary.md").read_text()
    tokens_per_second = train["results"][0]["tokens_per_second"]
    assert "| demo | jaxlm | 4.2 M | 4 x 32 | none |" in summary
    assert f"| {tokens_per_second:,.0f} |" in summary
    for row in decode["results"]:
        assert f"| {row['batch']} | {1e3 * row['latency_s']:.3f} |" in summary
    top = train["profile"]["top_operations"]  # the first size's steps were traced
    assert train["profile"]["steps"] == 3 and 0 < top[0]["share"] <= 1
    assert "Operations of demo by time, over 3 traced steps:" in summary
    assert f"| `{top[0]['op']}` | {top[0]['ms_per_step']:.2f} |" in summary


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    out = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
