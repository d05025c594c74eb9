"""The TPU VM launcher: its dry runs print the exact gcloud commands; bad flags fail clearly."""

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "tpu_scripts" / "tpu.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "tpu_type, version",
    [
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
    ],
)
def test_create_dry_run_prints_the_gcloud_command(tpu_type, version):
    out = _run("--dry-run", "create", "--name", "lm", "--zone", "z", "--type", tpu_type, "--spot")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "lm", "--zone=z",
        f"--accelerator-type={tpu_type}", f"--version={version}", "--spot",
    ]  # fmt: skip


def test_train_dry_run_runs_jaxlm_on_every_worker():
    out = _run("--dry-run", "train", "--name", "lm", "--zone", "z", "--", "train.steps=10")
    assert out.returncode == 0, out.stderr
    scp, ssh = out.stdout.strip().splitlines()
    assert (
        scp.startswith("gcloud compute tpus tpu-vm scp configs/demo.yaml") and "--worker=all" in scp
    )
    assert (
        "--worker=all" in ssh and "python3\\ -m\\ jaxlm\\ train\\ run.yaml\\ train.steps=10" in ssh
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--zone", "z"], "--name and --zone are required"),
        (["--name", "lm", "--zone", "z"], "missing ACTION"),
        (["create", "--name", "lm", "--zone", "z", "--bogus"], "unknown argument '--bogus'"),
        (["create", "--name", "lm", "--zone", "z", "--type", "v9-8"], "no default --version"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    out = _run("--dry-run", *args)
    assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1


def test_help():
    out = _run("--help")
    assert out.returncode == 0 and "--dry-run" in out.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    out = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
