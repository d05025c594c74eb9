"""Killed, preempted and diverging runs on real text, against an uninterrupted reference run.

`python -m jaxlm train` runs in subprocesses (with the same 8 simulated CPU devices as the tests)
that are SIGKILLed at random points, once while a checkpoint is being written, or SIGTERMed; the
resumed run must end with the same parameters and the same loss at every step as a run that was
never interrupted (run in-process), bitwise.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxlm import cli
from jaxlm.checkpoint import Checkpointer, restore_numpy
from jaxlm.config import load_config
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.train.preemption import PREEMPTED_EXIT_CODE, Preemption
from jaxlm.train.trainer import train

STEPS, EVERY = 40, 5
ENV = dict(os.environ)  # conftest's XLA_FLAGS: the subprocesses see the same 8 CPU devices


@pytest.fixture(scope="module")
def tokenizer(real_text_files, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    train_tokenizer(real_text_files, path, 512, "bpe", 20_000)
    return path


def _overrides(files, tokenizer, workdir, *extra) -> list[str]:
    return [
        f"data.train_files=[{','.join(str(f) for f in files)}]",
        f"data.tokenizer={tokenizer}",
        "data.eval_fraction=0.1",
        "data.seq_len=32",
        "data.batch_size=8",
        "model.num_layers=2",
        "model.embed_dim=32",
        "model.num_heads=4",
        "model.mlp_dim=64",
        "model.vocab_size=512",
        "model.max_len=32",
        "model.dropout_rate=0.1",
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=5",
        f"train.steps={STEPS}",
        "train.log_every=1",
        "train.eval_every=20",
        "train.eval_batches=2",
        f"train.checkpoint_every={EVERY}",
        "train.progress_bar=false",
        f"train.workdir={workdir}",
        "sample.prompts=[]",
        *extra,
    ]


def _start(overrides) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxlm", "train", "demo", *overrides],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def _kill(process: subprocess.Popen) -> None:
    process.kill()
    process.communicate()  # reaps it and closes its stderr pipe


def _last_train_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    complete = path.read_text().split("\n")[:-1]  # the line being appended has no newline yet
    steps = [json.loads(line)["step"] for line in complete if "train" in line]
    return max(steps, default=0)


def _wait_for(process: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"run ended early: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "run did not get there in time"
        time.sleep(0.002)


def _saving(checkpoints: Path, after: int) -> bool:
    """A checkpoint newer than `after` is being written or has just appeared."""
    if not checkpoints.is_dir():
        return False
    steps = [int(p.name.split(".")[0]) for p in checkpoints.iterdir() if p.name[0].isdigit()]
    return any(s > after for s in steps)


def _losses(workdir: Path) -> dict[int, float]:
    """The last logged train loss of every step (a resumed run re-runs and re-logs some)."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _final_params(workdir: Path) -> dict[str, np.ndarray]:
    return restore_numpy(workdir / "checkpoints" / str(STEPS))


@pytest.fixture(scope="module")
def reference(real_text_files, tokenizer, tmp_path_factory) -> Path:
    """A run that is never interrupted."""
    workdir = tmp_path_factory.mktemp("reference")
    train(load_config("demo", _overrides(real_text_files, tokenizer, workdir)))
    return workdir


def _assert_same_run(workdir: Path, reference: Path) -> None:
    assert _losses(workdir) == _losses(reference)
    assert sorted(_losses(workdir)) == list(range(1, STEPS + 1))
    got, want = _final_params(workdir), _final_params(reference)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.slow  # about 70 s; SIGTERM's test below checks an exact resume too
def test_run_killed_three_times_resumes_exactly(real_text_files, tokenizer, reference, tmp_path):
    rng = random.Random(0)
    workdir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    overrides = _overrides(real_text_files, tokenizer, workdir)

    # First kill: the moment a checkpoint directory appears (mid-save or just after).
    target = rng.choice([10, 15])
    process = _start(overrides)
    _wait_for(process, lambda: _saving(checkpoints, target - 1))
    _kill(process)
    print(f"at the first kill: {sorted(p.name for p in checkpoints.iterdir())}")

    for limit in (25, STEPS - 3):  # then at random steps, each after some progress on resuming
        start = _last_train_step(workdir) + 2
        target = rng.randrange(start, max(limit, start + 1))
        process = _start(overrides)
        _wait_for(process, lambda t=target: _last_train_step(workdir) >= t)
        _kill(process)

    rc, err = _finish(_start(overrides))
    assert rc == 0, err[-2000:]
    _assert_same_run(workdir, reference)


def test_sigterm_checkpoints_the_current_step_and_exits_75(
    real_text_files, tokenizer, reference, tmp_path
):
    overrides = _overrides(real_text_files, tokenizer, tmp_path)
    target = random.Random(1).randrange(6, STEPS - 5)
    process = _start(overrides)
    _wait_for(process, lambda: _last_train_step(tmp_path) >= target)
    process.send_signal(signal.SIGTERM)
    rc, err = _finish(process)
    assert rc == PREEMPTED_EXIT_CODE, err[-2000:]
    stopped_at = _last_train_step(tmp_path)
    assert stopped_at < STEPS
    assert Checkpointer(tmp_path / "checkpoints", read_only=True).latest_step() == stopped_at
    assert f"after checkpointing step {stopped_at}" in err

    train(load_config("demo", overrides))  # resume in-process: nothing lost, nothing repeated
    _assert_same_run(tmp_path, reference)


def _nan_overrides(files, tokenizer, workdir, policy):
    # An absurd learning rate makes the loss overflow within a few steps.
    return _overrides(
        files,
        tokenizer,
        workdir,
        "optim.learning_rate=1e30",
        "optim.warmup_steps=0",
        "optim.grad_clip=0",
        "train.eval_every=0",
        "train.steps=6",
        f"train.nan_policy={policy}",
    )


def test_nan_stop_is_a_one_line_error_naming_the_step_with_no_checkpoint_of_it(
    real_text_files, tokenizer, tmp_path, capsys
):
    overrides = _nan_overrides(real_text_files, tokenizer, tmp_path, "stop")
    assert cli.main(["train", "demo", *overrides, "train.checkpoint_every=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "non-finite loss or gradient norm" in err, err
    bad = int(re.search(r"at step (\d+)", err).group(1))
    losses = _losses(tmp_path)
    assert not np.isfinite(losses[bad])
    assert all(np.isfinite(losses[step]) for step in range(1, bad))
    saved = Checkpointer(tmp_path / "checkpoints", read_only=True).all_steps()
    assert saved == list(range(max(1, bad - 3), bad))  # every step before it, none after


def test_nan_skip_leaves_params_unchanged_on_the_bad_step(real_text_files, tokenizer, tmp_path):
    overrides = _nan_overrides(real_text_files, tokenizer, tmp_path, "skip")
    train(
        load_config("demo", [*overrides, "train.checkpoint_every=1", "train.keep_checkpoints=20"])
    )
    losses = _losses(tmp_path)
    bad = [step for step, loss in losses.items() if not np.isfinite(loss)]
    assert bad, "the learning rate did not make the loss overflow"
    for step in bad:
        before = restore_numpy(tmp_path / "checkpoints" / str(step - 1), prefix="")
        after = restore_numpy(tmp_path / "checkpoints" / str(step), prefix="")
        for name in before:
            if name != "step":
                np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        assert after["step"] == before["step"] + 1


def test_preemption_turns_a_signal_into_a_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT)
    with Preemption() as preemption:
        assert not preemption.requested(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert preemption.requested(2) and preemption.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before
