"""`train.profile_steps`: the JAX profiler traces the chosen steps of a run into its workdir;
`jaxlm bench --profile DIR` traces more steps after its timing."""

import json
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
    _, after = capsys.readouterr().out.split(f"profiled steps 3-4 into {tmp_path / 'profile'}\n")
    costliest = after.splitlines()[:5]  # then its five costliest operations
    assert all(" ms/step " in line and "%" in line for line in costliest), costliest


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
    argv += ["--profile", str(tmp_path / "trace"), "--json", str(tmp_path / "bench.json")]
    assert cli.main(argv) == 0
    assert _traced_steps(tmp_path / "trace") == [0, 1, 2]
    profile = json.loads((tmp_path / "bench.json").read_text())["profile"]
    top = profile["top_operations"]
    assert profile["steps"] == 3 and len(top) == 15 and top[0]["share"] >= top[-1]["share"]
    printed = capsys.readouterr().out
    assert f"operations taking the most time ({tmp_path / 'trace'}):" in printed
    assert f"ms/step {100 * top[0]['share']:>5.1f}%  {top[0]['op']}" in printed


def test_the_costliest_operation_of_a_trace_is_the_one_that_takes_the_time(tmp_path):
    """A jitted 1024^3 matrix product and a cheap elementwise tail, traced four times: the
    product's operation takes most of the operations' time, about the measured wall time."""
    import time

    import jax
    import jax.numpy as jnp

    from jaxlm.bench.trace_summary import top_operations, trace_file

    product = jax.jit(lambda a, b: jnp.tanh(a @ b) + 1.0)
    a = jnp.ones((1024, 1024))
    product(a, a).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        start = time.perf_counter()
        for _ in range(4):
            product(a, a).block_until_ready()
        wall = (time.perf_counter() - start) / 4
    top = top_operations(tmp_path, steps=4)
    assert top[0]["share"] > 0.8 and top[0]["count"] == 1
    (trace,) = tmp_path.glob("plugins/profile/*/*.xplane.pb")
    other_host = tmp_path / "plugins" / "profile" / "9999_later" / "other-host.xplane.pb"
    other_host.parent.mkdir()
    other_host.write_bytes(b"")  # a later trace of another host of a multi-host run
    assert trace_file(tmp_path) == trace  # this host's own
    trace.unlink()
    assert trace_file(tmp_path) == other_host
    assert 0.3 * wall < top[0]["ms_per_step"] / 1e3 < 1.5 * wall
    assert "train" not in {op["op"] for op in top}  # annotations are not operations
