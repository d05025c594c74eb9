"""The launch scripts in tpu_scripts/.

Dry runs print exactly the expected commands (compared token by token, as a shell splits them);
bad flags fail with one line on stderr and exit status 2; the shell commands sent to the TPU
workers are run for real against a fake worker home folder; the GPU script's XLA flags are known
to the installed jaxlib. No network and no gcloud needed.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = ROOT / "tpu_scripts"
TPU, GPU, PACK = SCRIPTS / "tpu.sh", SCRIPTS / "gpu_train.sh", SCRIPTS / "pack.sh"
AT = ["--name", "lm", "--zone", "z"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm", "--zone=z"]
SCP = ["gcloud", "compute", "tpus", "tpu-vm", "scp"]

INSTALL_STEPS = (
    "set -e; rm -rf jaxlm jaxlm-venv; mkdir -p jaxlm jaxlm-work/configs; "
    "tar -xzf jaxlm.tar.gz -C jaxlm; rm jaxlm.tar.gz; "
    "python3 -m pip install --user --quiet --upgrade uv; "
    ".local/bin/uv venv --quiet --python 3.12 jaxlm-venv; "
    ".local/bin/uv pip install --quiet --python jaxlm-venv/bin/python -e ./jaxlm 'jax[tpu]'; "
    "jaxlm-venv/bin/jaxlm --help > /dev/null; "
    'echo "$(hostname): jaxlm installed in ~/jaxlm-venv"'
)
TRAIN_GUARD = (
    "cd jaxlm-work || exit 1; "
    'if [ -f train.pid ] && kill -0 "$(cat train.pid)" 2>/dev/null; then '
    'echo "$(hostname): jaxlm is already running (pid $(cat train.pid)); stop it first" >&2; '
    "exit 1; fi; "
)
TRAIN_TAIL = (
    " > train.log 2>&1 < /dev/null & echo $! > train.pid; "
    'echo "$(hostname): training, pid $(cat train.pid), log ~/jaxlm-work/train.log"'
)


def stop_steps(grace):
    return (
        "cd jaxlm-work 2>/dev/null && [ -f train.pid ] || "
        '{ echo "$(hostname): not training"; exit 0; }; '
        "pid=$(cat train.pid); "
        'if kill -TERM "$pid" 2>/dev/null; then '
        f'echo "$(hostname): SIGTERM sent to $pid, waiting up to {grace} s"; '
        f'i=0; while kill -0 "$pid" 2>/dev/null && [ "$i" -lt {grace} ]; '
        "do sleep 1; i=$((i + 1)); done; "
        'if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; '
        'echo "$(hostname): SIGKILL sent to $pid"; fi; fi; '
        "rm -f train.pid"
    )


def _run(script, *args, env=None, inherit=True):
    """bash SCRIPT ARGS in the project root; `env` adds to (or with inherit=False replaces) ours."""
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**(os.environ if inherit else {}), **(env or {})},
        timeout=60,
    )


def _dry(*args, env=None):
    """tpu.sh --dry-run ACTION ... for VM `lm` in zone `z`: one token list per printed line."""
    out = _run(TPU, "--dry-run", *AT, *args, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return [shlex.split(line) for line in out.stdout.splitlines()]


GENERATIONS = [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
]


@pytest.mark.parametrize("tpu_type, version", GENERATIONS)
def test_create_a_vm(tpu_type, version):
    assert _dry("create", "--type", tpu_type, "--spot") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "lm", "--zone=z",
         f"--accelerator-type={tpu_type}", f"--version={version}", "--spot"],
    ]  # fmt: skip


@pytest.mark.parametrize("tpu_type, version", GENERATIONS)
def test_create_a_queued_resource(tpu_type, version):
    lines = _dry(
        "create", "--type", tpu_type, "--queued", "--reserved", "--valid-until=6h", "--project", "p"
    )
    assert lines == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "lm", "--zone=z",
         "--project=p", "--node-id=lm", f"--accelerator-type={tpu_type}",
         f"--runtime-version={version}", "--reserved", "--valid-until-duration=6h"],
    ]  # fmt: skip


def test_an_explicit_version_wins():
    (line,) = _dry("create", "--type", "v4-8", "--version", "v2-alpha-tpuv4")
    assert line[-1] == "--version=v2-alpha-tpuv4"


def test_status_and_delete_a_vm_or_a_queued_resource():
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    queued = ["gcloud", "compute", "tpus", "queued-resources"]
    assert _dry("status") == [[*tpu_vm, "describe", "lm", "--zone=z"]]
    assert _dry("status", "--queued") == [[*queued, "describe", "lm", "--zone=z"]]
    assert _dry("delete") == [[*tpu_vm, "delete", "lm", "--zone=z"]]
    assert _dry("delete", "--queued", "--yes") == [
        [*queued, "delete", "lm", "--zone=z", "--force", "--quiet"]
    ]


def test_install_packs_the_checkout_and_installs_it_on_every_worker(tmp_path):
    archive = str(tmp_path / "jaxlm-lm.tar.gz")
    assert _dry("install", env={"TMPDIR": str(tmp_path)}) == [
        ["bash", str(PACK), archive],
        [*SCP, archive, "lm:jaxlm.tar.gz", "--zone=z", "--worker=all"],
        ["rm", "-f", archive],
        [*SSH, "--worker=all", f"--command={INSTALL_STEPS}"],
    ]
    lines = _dry("install", "--python", "3.11", "--jax", "jax[tpu]==0.7.2")
    assert "--python 3.11 jaxlm-venv" in lines[-1][-1]
    assert "-e ./jaxlm 'jax[tpu]==0.7.2';" in lines[-1][-1]


def test_copy_a_folder_or_a_file_to_every_worker(tmp_path):
    assert _dry("copy", "--src", "configs/") == [
        [*SSH, "--worker=all", "--command=mkdir -p jaxlm-work"],
        [*SCP, "--recurse", "configs", "lm:jaxlm-work/", "--zone=z", "--worker=all"],
    ]
    tokens = tmp_path / "my tokens.bin"
    tokens.write_bytes(b"")
    assert _dry("copy", "--src", str(tokens), "--dest", "data/web") == [
        [*SSH, "--worker=all", "--command=mkdir -p jaxlm-work/data/web"],
        [*SCP, str(tokens), "lm:jaxlm-work/data/web/", "--zone=z", "--worker=all"],
    ]


def test_train_copies_the_config_and_starts_jaxlm_on_every_worker():
    lines = _dry("train", "--config", "configs/demo.yaml", "--", "train.steps=10")
    assert lines == [
        [*SCP, "configs/demo.yaml", "lm:jaxlm-work/configs/demo.yaml", "--zone=z",
         "--worker=all"],
        [*SSH, "--worker=all",
         "--command=" + TRAIN_GUARD + "nohup env PYTHONUNBUFFERED=1 ../jaxlm-venv/bin/jaxlm "
         "train configs/demo.yaml distributed.enabled=true train.steps=10" + TRAIN_TAIL],
    ]  # fmt: skip


def test_train_a_preset_with_environment_and_awkward_overrides():
    env = "LIBTPU_INIT_ARGS=--a=1 --b"
    overrides = ["train.steps=10", 'sample.prompts=["it\'s"]']
    lines = _dry("train", "--config", "gpt2-small", "--env", env, "--", *overrides)
    assert lines == [
        [*SSH, "--worker=all",
         "--command=" + TRAIN_GUARD + "nohup env PYTHONUNBUFFERED=1 'LIBTPU_INIT_ARGS=--a=1 --b' "
         "../jaxlm-venv/bin/jaxlm train gpt2-small distributed.enabled=true train.steps=10 "
         "'sample.prompts=[\"it'\\''s\"]'" + TRAIN_TAIL],
    ]  # fmt: skip


def test_logs_and_stop():
    assert _dry("logs") == [[*SSH, "--worker=0", "--command=tail -n 100 -F jaxlm-work/train.log"]]
    assert _dry("logs", "--worker", "3")[0][-2] == "--worker=3"
    assert _dry("stop") == [[*SSH, "--worker=all", f"--command={stop_steps(300)}"]]
    assert _dry("stop", "--grace", "20") == [[*SSH, "--worker=all", f"--command={stop_steps(20)}"]]


def _remote_command(*args):
    """The --command that tpu.sh would send to the workers."""
    (*_, line) = _dry(*args)
    assert line[-1].startswith("--command=")
    return line[-1].removeprefix("--command=")


FAKE_JAXLM = """#!/bin/sh
for arg in "$@"; do printf '%s\\n' "$arg"; done > args.txt
printf '%s|%s\\n' "$PYTHONUNBUFFERED" "$LIBTPU_INIT_ARGS" > env.txt
trap 'echo stopped > stopped.txt; exit 0' TERM
while :; do sleep 0.05; done
"""


def test_the_worker_commands_start_guard_and_stop_training(tmp_path):
    """Run the train and stop commands with `sh` in a fake worker home, jaxlm replaced by a stub."""
    work, venv_bin = tmp_path / "jaxlm-work", tmp_path / "jaxlm-venv" / "bin"
    work.mkdir()
    venv_bin.mkdir(parents=True)
    (venv_bin / "jaxlm").write_text(FAKE_JAXLM)
    (venv_bin / "jaxlm").chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path)}
    overrides = ["train.steps=10", 'sample.prompts=["it\'s", "a  b"]']
    train = _remote_command(
        "train", "--config", "gpt2-small", "--env", "LIBTPU_INIT_ARGS=--x=1 --y", "--", *overrides
    )
    stop = _remote_command("stop", "--grace", "5")

    def on_worker(command):
        return subprocess.run(
            ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )

    started = on_worker(train)
    pid = int((work / "train.pid").read_text())
    try:
        assert started.returncode == 0, started.stderr
        assert "training, pid" in started.stdout
        for _ in range(200):
            if (work / "env.txt").exists():
                break
            time.sleep(0.01)
        args = (work / "args.txt").read_text().splitlines()
        assert args == ["train", "gpt2-small", "distributed.enabled=true", *overrides]
        assert (work / "env.txt").read_text() == "1|--x=1 --y\n"

        again = on_worker(train)
        assert again.returncode == 1 and "already running" in again.stderr
        assert int((work / "train.pid").read_text()) == pid

        stopped = on_worker(stop)
        assert stopped.returncode == 0, stopped.stderr
        assert "SIGTERM sent" in stopped.stdout and "SIGKILL" not in stopped.stdout
        assert (work / "stopped.txt").read_text() == "stopped\n"
        assert not (work / "train.pid").exists()
        assert "not training" in on_worker(stop).stdout
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_install_command_is_valid_shell():
    out = subprocess.run(["sh", "-n", "-c", _remote_command("install")], capture_output=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (AT, "missing ACTION"),
        (["create", "--zone", "z", "--type", "v4-8"], "missing --name"),
        (["create", "--name", "lm", "--type", "v4-8"], "missing --zone"),
        (["create", *AT, "--bogus"], "unknown flag '--bogus'"),
        (["launch", *AT], "unknown action 'launch'"),
        (["create", "status", *AT], "unexpected argument 'status'"),
        (["create", *AT, "--type"], "--type needs a value"),
        (["create", "--name", "--zone", "z"], "--name needs a value"),
        (["create", *AT, "--spot=yes", "--type", "v4-8"], "--spot takes no value"),
        (["create", "--name", "LM_1", "--zone", "z"], "--name 'LM_1' must be lowercase"),
        (["create", *AT], "create needs --type"),
        (["create", *AT, "--type", "v9-8"], "no default --version for type 'v9-8'"),
        (["create", *AT, "--type", "v5e-16"], "v5e types are named v5litepod-N"),
        (["create", *AT, "--type", "big"], "--type 'big' is not like v4-32"),
        (["create", *AT, "--type", "v4-8", "--spot", "--reserved"], "exclude each other"),
        (["create", *AT, "--type", "v4-8", "--valid-until", "6h"], "--valid-until needs --queued"),
        (["create", *AT, "--type", "v4-8", "--queued", "--valid-until", "soon"], "not a duration"),
        (["logs", *AT, "--spot"], "--spot does not apply to 'logs'"),
        (["install", *AT, "--config", "x.yaml"], "--config does not apply to 'install'"),
        (["install", *AT, "--python", "3"], "--python '3' is not like 3.12"),
        (["status", *AT, "--", "train.steps=1"], "overrides after -- only apply to 'train'"),
        (["copy", *AT], "copy needs --src"),
        (["copy", *AT, "--src", "no/such/dir"], "--src not found: no/such/dir"),
        (["copy", *AT, "--src", ".."], "'..' is outside this folder: pass --dest"),
        (["copy", *AT, "--src", "/"], "'/' is outside this folder: pass --dest"),
        (["train", *AT], "train needs --config"),
        (["train", *AT, "--config", "configs/nope.yaml"], "config not found: configs/nope.yaml"),
        (["train", *AT, "--config", "gpt2-small", "--env", "A B"], "--env 'A B' is not NAME=VALUE"),
        (["train", *AT, "--config", "gpt2-small", "--", "steps=1"], "is not section.key=value"),
        (["logs", *AT, "--worker", "all"], "--worker 'all' is not a worker number"),
        (["stop", *AT, "--grace", "1m"], "--grace '1m' is not a number of seconds"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_status_2(args, message):
    out = _run(TPU, "--dry-run", *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("tpu.sh: ") and out.stdout == ""


@pytest.mark.parametrize("script", [TPU, GPU, PACK])
def test_help(script):
    out = _run(script, "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: ") and out.stderr == ""


XLA_FLAGS = [
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_command_buffer=",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
]
GPU_ENV = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_DEVICE_MAX_CONNECTIONS")


def _gpu_dry(*args, env=None):
    clean = {k: v for k, v in os.environ.items() if k not in GPU_ENV}
    out = _run(GPU, "--dry-run", *args, env={**clean, **(env or {})}, inherit=False)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines()]


def test_gpu_dry_run_shows_the_settings_and_the_command():
    assert _gpu_dry("--gpus", "0,1", "configs/gpt2-small.yaml", "train.steps=10") == [
        ["export", "XLA_FLAGS=" + " ".join(XLA_FLAGS)],
        ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90"],
        ["export", "CUDA_DEVICE_MAX_CONNECTIONS=1"],
        ["export", "CUDA_VISIBLE_DEVICES=0,1"],
        ["jaxlm", "train", "configs/gpt2-small.yaml", "train.steps=10"],
    ]


def test_gpu_settings_the_user_made_win():
    env = {
        "XLA_FLAGS": "--xla_dump_to=dump",
        "CUDA_DEVICE_MAX_CONNECTIONS": "8",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": ".7",
    }
    lines = _gpu_dry("gpt2-small", env=env)
    assert lines[0] == ["export", "XLA_FLAGS=" + " ".join([*XLA_FLAGS, "--xla_dump_to=dump"])]
    assert lines[1:] == [
        ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=.7"],
        ["export", "CUDA_DEVICE_MAX_CONNECTIONS=8"],
        ["jaxlm", "train", "gpt2-small"],
    ]
    assert _gpu_dry("--mem-fraction=0.8", "gpt2-small", env=env)[1][-1].endswith("=0.8")


def test_gpu_script_runs_jaxlm_with_the_settings(tmp_path):
    (tmp_path / "jaxlm").write_text('#!/bin/sh\necho "$*|$XLA_PYTHON_CLIENT_MEM_FRACTION"\n')
    (tmp_path / "jaxlm").chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    out = _run(GPU, "gpt2-small", "train.steps=1", env=env)
    assert out.returncode == 0 and out.stdout == "train gpt2-small train.steps=1|0.90\n", out.stderr


def test_gpu_xla_flags_are_known_to_the_installed_jaxlib():
    """XLA aborts at start-up on an unknown flag: every flag the script sets must parse."""
    env = {**os.environ, "XLA_FLAGS": " ".join(XLA_FLAGS), "JAX_PLATFORMS": "cpu"}
    code = "import jax; jax.numpy.zeros(1).block_until_ready()"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "missing CONFIG"),
        (["--bogus", "gpt2-small"], "unknown flag '--bogus'"),
        (["--gpus"], "--gpus needs a value"),
        (["--gpus", "first", "gpt2-small"], "--gpus 'first' is not like 0,1"),
        (["--mem-fraction", "1.5", "gpt2-small"], "is not a number in (0, 1]"),
        (["configs/nope.yaml"], "config not found: configs/nope.yaml"),
        (["gpt2-small", "steps=1"], "override 'steps=1' is not section.key=value"),
    ],
)
def test_gpu_bad_arguments_fail_with_one_line_and_status_2(args, message):
    out = _run(GPU, "--dry-run", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_pack_ships_the_checkout_without_ignored_files(tmp_path):
    out = _run(PACK, str(tmp_path / "jaxlm.tar.gz"))
    assert out.returncode == 0, out.stderr
    tar = subprocess.run(
        ["tar", "-tzf", str(tmp_path / "jaxlm.tar.gz")], capture_output=True, text=True, check=True
    )
    listing = tar.stdout.splitlines()
    assert {"pyproject.toml", "jaxlm/__init__.py", "tpu_scripts/tpu.sh"} <= set(listing)
    assert not [p for p in listing if p.split("/")[0] in {".venv", ".git", "data", "runs"}]
    assert _run(PACK).returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    assert len(scripts) == 4
    out = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
