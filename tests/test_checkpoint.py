"""Orbax round trip of a sharded train state, onto the same and onto another mesh."""

import jax
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.checkpoint import Checkpointer
from jaxlm.config import load_config
from jaxlm.errors import JaxlmError
from jaxlm.parallel import make_mesh
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state, state_shardings

CFG = load_config(
    None,
    TINY_MODEL + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
)


def test_sharded_state_round_trips_onto_same_and_single_device_mesh(tmp_path):
    tx, _ = make_optimizer(CFG.optim, 10)
    state, _ = init_state(CFG.model, tx, make_mesh(CFG.mesh), seed=1)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(7, state)
    checkpointer.close()

    for mesh in (make_mesh(CFG.mesh), make_mesh(load_config().mesh, jax.devices()[:1])):
        abstract, shardings = state_shardings(CFG.model, tx, mesh)
        restored = Checkpointer(tmp_path).restore(abstract, shardings)
        assert int(restored.step) == 0
        pairs = zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
        for got, want in pairs:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        for leaf, sharding in zip(
            jax.tree.leaves(restored), jax.tree.leaves(shardings), strict=True
        ):
            assert leaf.sharding == sharding


def test_restoring_from_an_empty_directory_is_a_clear_error(tmp_path):
    tx, _ = make_optimizer(CFG.optim, 10)
    abstract, shardings = state_shardings(CFG.model, tx, make_mesh(CFG.mesh))
    with pytest.raises(JaxlmError, match="no checkpoint in"):
        Checkpointer(tmp_path).restore(abstract, shardings)
