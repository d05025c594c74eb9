"""The sharding report: golden PartitionSpecs of the presets, per-device shapes and bytes checked
against real sharded arrays, and one-line errors.

The golden files are tests/golden/partition_specs/<preset>.txt. After an intended change to the
axis rules or to a model, regenerate them and review the diff:

    JAXLM_UPDATE_GOLDEN=1 pytest tests/test_sharding.py -k golden
"""

import os
import resource
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny import FACTORED_ADAFACTOR, TINY_MODEL

from jaxlm import cli
from jaxlm.config import load_config, preset_names
from jaxlm.errors import ConfigError
from jaxlm.parallel import make_mesh
from jaxlm.sharding_report import abstract_mesh, parse_mesh, partition_spec_table, state_layout
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state

GOLDEN = Path(__file__).parent / "golden" / "partition_specs"
GOLDEN_MESH = "data=2,fsdp=2,tensor=2"
# gpt2-xl's 25 heads cannot be split over tensor=2 (see the error test below); the one key/value
# head of gemma-2b and gemma3-1b is replicated over it.
GOLDEN_MESHES = {"gpt2-xl": "data=2,fsdp=4"}
UPDATE = "tests/test_sharding.py -k golden"


@pytest.mark.parametrize("preset", preset_names())
def test_partition_specs_match_golden(preset):
    mesh = GOLDEN_MESHES.get(preset, GOLDEN_MESH)
    table = partition_spec_table(load_config(preset), abstract_mesh(parse_mesh(mesh)))
    got = f"# {preset} on mesh {mesh}; regenerate: JAXLM_UPDATE_GOLDEN=1 pytest {UPDATE}\n{table}\n"
    path = GOLDEN / f"{preset}.txt"
    if os.environ.get("JAXLM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"no golden file {path}; run with JAXLM_UPDATE_GOLDEN=1 to write it"
    assert got == path.read_text()


TINY = TINY_MODEL + ["model.num_heads=8", "model.vocab_multiple=8"]


def _device_bytes(tree, device) -> int:
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


OPTIMIZERS = {"adamw": [], "adafactor": FACTORED_ADAFACTOR}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("mesh", ["data=1,fsdp=8,tensor=1", "data=2,fsdp=2,tensor=2"])
def test_layout_matches_real_sharded_arrays(mesh, optimizer):
    cfg = load_config(None, [*TINY, *OPTIMIZERS[optimizer]])
    cfg.mesh = parse_mesh(mesh)
    tx, _ = make_optimizer(cfg.optim, cfg.train.steps)
    state, _ = init_state(cfg.model, tx, make_mesh(cfg.mesh, jax.devices()), seed=0)
    layout = state_layout(cfg, abstract_mesh(cfg.mesh))
    for want, leaf in zip(
        layout.params + layout.opt_state,
        jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state),
        strict=True,
    ):
        assert want.shape == leaf.shape, want.path
        spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
        assert want.spec == spec, want.path
        assert {s.data.shape for s in leaf.addressable_shards} == {want.local_shape}, want.path
    totals = layout.totals()
    for device in jax.devices():
        assert _device_bytes(state.params, device) == totals["parameters"][1]
        assert _device_bytes(state.opt_state, device) == totals["optimizer state"][1]
    assert totals["parameters"][0] == sum(x.nbytes for x in jax.tree.leaves(state.params))


def test_fsdp8_holds_an_eighth_of_gpt2_small_per_device():
    cfg = load_config("gpt2-small")
    layout = state_layout(cfg, abstract_mesh(parse_mesh("data=1,fsdp=8,tensor=1")))
    whole, local = layout.totals()["parameters"]
    assert whole == 4 * (124_439_808 + (50304 - 50257) * 768)  # float32, vocab padded to 50304
    # Only norms and the biases without an `embed` axis (~0.1M of 124M values) stay whole.
    assert whole / 8 < local < 1.01 * whole / 8
    opt_whole, opt_local = layout.totals()["optimizer state"]
    assert 2 * whole < opt_whole < 2 * whole + 100 and 2 * local < opt_local < 2 * local + 100


def test_describe_prints_the_layout_without_allocating(capsys):
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, else KiB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    assert cli.main(["describe", "gpt2-xl", "--mesh", "data=16,fsdp=16"]) == 0
    # Parameters alone would take 6.2 GB; the process's peak memory grows by less than 0.5 GB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - peak < 500e6
    out = capsys.readouterr().out
    assert "mesh: data=16,fsdp=16,tensor=1 (256 devices)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # vocab 50257 padded to 50304, embed 1600: one device keeps 50304 x 100 of the table.
    assert "P('tensor', 'fsdp')" in rows["token_embed/embedding"]
    assert rows["token_embed/embedding"].endswith("(50304, 100)")
    n = 1_557_611_200 + (50304 - 50257) * 1600  # published count + vocabulary padding
    assert f"({4 * n:,})" in rows["parameters"]


@pytest.mark.parametrize(
    "text", ["data=2;fsdp=2", "model=2", "data=0", "data=-1", "data=2,data=2", "data", "fsdp=x", ""]
)
def test_bad_mesh_flag_is_a_one_line_error(capsys, text):
    with pytest.raises(ConfigError, match="--mesh"):
        parse_mesh(text)
    assert cli.main(["describe", "demo", "--mesh", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxlm: error: --mesh") and err.count("\n") == 1


def test_mesh_that_does_not_divide_a_parameter_names_it(capsys):
    assert cli.main(["describe", "gpt2-xl", "--mesh", "tensor=2"]) == 2
    err = capsys.readouterr().err
    assert "self_attention" in err and "25" in err and err.count("\n") == 1


def test_parse_mesh_fills_left_out_axes_with_one():
    mesh = parse_mesh("tensor=4, data=2")
    assert (mesh.data, mesh.fsdp, mesh.tensor) == (2, 1, 4)
    assert np.prod(list(abstract_mesh(mesh).shape.values())) == 8
