"""`train.profile_steps`: the JAX profiler traces the chosen steps of a run into its workdir;
`jaxlm bench --profile DIR` traces more steps after its timing."""

from pathlib import Path

import pytest
from tiny import TINY_MODEL

import jaxlm
from jaxlm.errors import ConfigError


def _run(workdir: Path, steps: int, profile: list[str]) -> None:
    from pydoc_data.topics import topics

    documents = [topics[name] for name in sorted(topics)]
    overrides = [*TINY_MODEL, "model.vocab_size=512", "model.max_len=64", "data.seq_len=32"]
    overrides += ["data.batch_size=8", "train.eval_every=0", "sample.prompts=[]"]
    overrides += [f"train.steps={steps}", f"train.workdir={workdir}", *profile]
    cfg = jaxlm.load_config("demo", overrides)
    jaxlm.Trainer(cfg, data=jaxlm.data_from_examples(cfg, documents[4:], documents[:4])).fit()


def _traced_steps(folder: Path) -> list[int]:
    """The training steps a trace folder holds: its "train" step annotations, by step number."""
    from jax.profiler import ProfileData

    (trace,) = folder.glob("plugins/profile/*/*.xplane.pb")
    steps = []
    for plane in ProfileData.from_file(str(trace)).planes:
        for line in plane.lines:
            names = [event.name for event in line.events]
            if "train" in names:
                assert any("train_step" in name for name in names)  # the jitted step ran in it
                steps += [dict(e.stats)["step_num"] for e in line.events if e.name == "train"]
    return sorted(steps)


def test_the_chosen_steps_are_traced(tmp_path, capsys):
    _run(tmp_path, steps=8, profile=["train.profile_steps=2", "train.profile_start=2"])
    assert _traced_steps(tmp_path / "profile") == [3, 4]
    assert f"profiled steps 3-4 into {tmp_path / 'profile'}" in capsys.readouterr().out


def test_a_trace_past_the_last_step_ends_with_the_run(tmp_path):
    _run(tmp_path, steps=4, profile=["train.profile_steps=10", "train.profile_start=2"])
    assert _traced_steps(tmp_path / "profile") == [3, 4]


def test_no_trace_unless_asked_and_bad_settings_are_named(tmp_path):
    _run(tmp_path, steps=2, profile=[])
    assert not (tmp_path / "profile").exists()
    for key in ("profile_steps", "profile_start"):
        with pytest.raises(ConfigError, match=f"train.{key}.*must be >= 0"):
            jaxlm.load_config("demo", [f"train.{key}=-1"])


def test_bench_traces_steps_after_its_timing(tmp_path, capsys):
    from jaxlm import cli

    tiny = [*TINY_MODEL, "model.vocab_size=256", "data.batch_size=8"]
    argv = ["bench", "demo", *tiny, "--steps", "1", "--warmup", "0"]
    assert cli.main([*argv, "--profile", str(tmp_path / "trace")]) == 0
    assert _traced_steps(tmp_path / "trace") == [0, 1, 2]
