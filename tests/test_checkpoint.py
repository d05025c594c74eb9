"""Orbax checkpoints: round trips across meshes, retention, broken steps, CLI inspection."""

import functools
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny import FACTORED_ADAFACTOR, TINY_MODEL

from jaxlm import cli
from jaxlm.checkpoint import (
    Checkpointer,
    CheckpointWarning,
    array_metadata,
    read_meta,
    restore_numpy,
)
from jaxlm.config import load_config
from jaxlm.errors import JaxlmError
from jaxlm.parallel import make_mesh
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state, state_shardings

CFG = load_config(None, TINY_MODEL)
MESHES = {"(8,1,1)": (8, 1, 1), "(2,2,2)": (2, 2, 2), "1 device": None}


def _mesh(shape):
    if shape is None:
        return make_mesh(load_config().mesh, jax.devices()[:1])
    data, fsdp, tensor = shape
    return make_mesh(
        load_config(None, [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]).mesh
    )


def _tx():
    return make_optimizer(CFG.optim, 10)[0]


@functools.cache
def _state(mesh_shape=(8, 1, 1), seed=1):
    return init_state(CFG.model, _tx(), _mesh(mesh_shape), seed=seed)[0]


def _target(mesh_shape=(8, 1, 1)):
    return state_shardings(CFG.model, _tx(), _mesh(mesh_shape))


def _assert_same(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _save(directory, states: dict, **options):
    checkpointer = Checkpointer(directory, **options)
    for step, (state, metrics) in states.items():
        checkpointer.save(step, state, metrics)
    checkpointer.close()


@pytest.mark.parametrize("source", ["(8,1,1)", "(2,2,2)"])
def test_sharded_state_round_trips_onto_other_meshes(tmp_path, source):
    state = _state(MESHES[source])
    _save(tmp_path, {7: (state, None)})
    for target in MESHES.values():
        abstract, shardings = _target(target)
        restored, meta = Checkpointer(tmp_path).restore_with_meta(abstract, shardings)
        assert meta == {"step": 7, "data_batches_consumed": 7, "metrics": {}}
        _assert_same(restored, state)
        for leaf, sharding in zip(
            jax.tree.leaves(restored), jax.tree.leaves(shardings), strict=True
        ):
            assert leaf.sharding == sharding


def test_adafactor_state_round_trips_onto_other_meshes(tmp_path):
    """Adafactor's factored row and column statistics are replicated rather than laid out like
    their parameters, and restore onto any mesh."""
    cfg = load_config(None, [*TINY_MODEL, *FACTORED_ADAFACTOR])
    tx = make_optimizer(cfg.optim, 10)[0]
    state = init_state(cfg.model, tx, _mesh((2, 2, 2)), seed=1)[0]
    state = state.replace(opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))  # not zeros
    assert any(x.shape == (2, 128) for x in jax.tree.leaves(state.opt_state))  # factored
    _save(tmp_path, {3: (state, None)})
    for target in MESHES.values():
        abstract, shardings = state_shardings(cfg.model, tx, _mesh(target))
        _assert_same(Checkpointer(tmp_path).restore_with_meta(abstract, shardings)[0], state)


def test_checkpoints_of_the_previous_format_still_restore(tmp_path):
    state = _state()
    with ocp.CheckpointManager(tmp_path) as manager:  # how jaxlm saved before the `meta` item
        manager.save(4, args=ocp.args.StandardSave(state))
    restored, meta = Checkpointer(tmp_path).restore_with_meta(*_target(None))
    assert meta["step"] == meta["data_batches_consumed"] == 4
    _assert_same(restored, state)
    assert read_meta(tmp_path / "4") == meta
    params = restore_numpy(tmp_path / "4")  # what `jaxlm checkpoint export` writes
    names = {n for n in array_metadata(tmp_path / "4") if n.startswith("params.")}
    assert {f"params.{n}" for n in params} == names
    assert len(params) == len(jax.tree.leaves(state.params))


def test_restoring_from_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(JaxlmError, match="no checkpoint in"):
        Checkpointer(tmp_path).restore(*_target())


@pytest.mark.parametrize("metric, mode, best", [("eval_loss", "min", 4), ("eval_bleu", "max", 6)])
def test_keeps_the_last_steps_and_the_best_by_a_metric(tmp_path, metric, mode, best):
    state = _state()
    values = {2: 3.0, 4: 1.0, 6: 5.0, 8: 4.0}
    saves = {
        step: (state, {metric: values[step]} if step in values else None) for step in range(1, 10)
    }
    _save(tmp_path, saves, max_to_keep=2, keep_best=1, best_metric=metric, best_mode=mode)
    assert Checkpointer(tmp_path).all_steps() == [best, 8, 9]


def _three_steps(directory):
    """Checkpoints of steps 1, 2, 3 holding different parameters; returns them by step."""
    states = {step: jax.tree.map(lambda x, s=step: x + s, _state()) for step in (1, 2, 3)}
    _save(directory, {step: (state, None) for step, state in states.items()})
    return states


def _data_files(step_dir):
    return sorted(p for p in (step_dir / "state").rglob("d/*") if p.is_file())


def _truncate(step_dir):
    for path in _data_files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete(step_dir):
    for path in _data_files(step_dir):
        path.unlink()


@pytest.mark.parametrize("damage", [_truncate, _delete])
def test_a_broken_latest_step_falls_back_to_the_previous_one(tmp_path, damage):
    states = _three_steps(tmp_path)
    damage(tmp_path / "3")
    checkpointer = Checkpointer(tmp_path)
    with pytest.warns(CheckpointWarning, match=re.escape(str(tmp_path / "3"))):
        restored, meta = checkpointer.restore_with_meta(*_target())
    assert meta["step"] == 2
    _assert_same(restored, states[2])
    checkpointer.discard_after(2)  # what the trainer does, so that step 3 can be saved again
    checkpointer.save(3, states[3])
    checkpointer.close()
    _assert_same(Checkpointer(tmp_path).restore(*_target()), states[3])


def test_an_unfinished_save_is_ignored_and_removed_with_a_warning(tmp_path):
    states = _three_steps(tmp_path)
    unfinished = tmp_path / "4.orbax-checkpoint-tmp-1234"
    (unfinished / "state").mkdir(parents=True)
    (unfinished / "state" / "_METADATA").write_text("{")
    with pytest.warns(CheckpointWarning, match=re.escape(str(unfinished))):
        checkpointer = Checkpointer(tmp_path, clean_unfinished=True)
    assert checkpointer.all_steps() == [1, 2, 3]
    _assert_same(checkpointer.restore(*_target()), states[3])
    assert not unfinished.exists()


def test_when_no_step_is_readable_it_is_one_line_error(tmp_path, capsys):
    _three_steps(tmp_path)
    for step in (1, 2, 3):
        _truncate(tmp_path / str(step))
    with pytest.warns(CheckpointWarning), pytest.raises(JaxlmError) as info:
        Checkpointer(tmp_path).restore(*_target())
    assert str(info.value) == f"no readable checkpoint in {tmp_path} (tried 3 steps)"


def test_cli_lists_inspects_and_exports_checkpoints(tmp_path, capsys):
    state = _state()
    _save(tmp_path, {5: (state, None), 10: (state, {"eval_loss": 2.5})})
    (tmp_path / "15.orbax-checkpoint-tmp-99").mkdir()

    assert cli.main(["checkpoint", "list", str(tmp_path)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["5", "complete"]
    assert lines[1] == ["10", "complete", "eval_loss=2.5"]
    assert lines[2][:2] == ["15", "unfinished"]

    assert cli.main(["checkpoint", "inspect", str(tmp_path / "10")]) == 0
    out = capsys.readouterr().out
    assert "step: 10" in out and "eval_loss: 2.5" in out
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        name = "params." + ".".join(k.key for k in path)
        assert re.search(rf"^{re.escape(name)}\s+float32\s+\({leaf.shape[0]},", out, re.M), name
    n_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    assert f"parameters: {n_params}" in out

    out_file = tmp_path / "params.safetensors"
    assert cli.main(["checkpoint", "export", str(tmp_path / "10"), str(out_file)]) == 0
    from safetensors.numpy import load_file

    exported = load_file(out_file)
    restored = Checkpointer(tmp_path).restore(*_target(None)).params
    flat = {
        ".".join(k.key for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]
    }
    assert exported.keys() == flat.keys()
    for name, value in flat.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert restore_numpy(tmp_path / "10").keys() == flat.keys()

    # A checkpoints folder (or a workdir) means its latest finished step: 10, not the
    # unfinished 15.
    capsys.readouterr()
    assert cli.main(["checkpoint", "inspect", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("step: 10\n")


def test_cli_checkpoint_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["checkpoint", "list", str(tmp_path / "missing")]) == 2
    assert cli.main(["checkpoint", "inspect", str(tmp_path)]) == 2  # no step in it
    assert cli.main(["checkpoint", "inspect", str(tmp_path / "7")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("jaxlm: error:") for line in err)
    assert err[1] == f"jaxlm: error: no finished checkpoint in {tmp_path}"
