"""The sharded train step: same numbers on any mesh, parameters sharded as the rules say."""

import jax
import numpy as np
import pytest
from tiny import FACTORED_ADAFACTOR, TINY_MODEL

from jaxlm.config import load_config
from jaxlm.parallel import activate, make_mesh, shard_batch
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import init_state
from jaxlm.train.step import compile_train_step

TINY = TINY_MODEL + [
    "model.num_heads=8",  # tensor parallelism over 8 devices splits heads 8 ways
    "model.vocab_multiple=8",
    "data.batch_size=8",
    "optim.warmup_steps=1",
    "optim.learning_rate=1e-3",
    "train.steps=10",
]


def _batch(seed=0, batch=8, length=16, vocab=100):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab, size=(batch, length + 1)).astype(np.int32)
    segments = np.ones((batch, length), np.int32)
    segments[:, length // 2 :] = 2  # two packed documents per row
    positions = np.concatenate([np.arange(length // 2)] * 2)[None].repeat(batch, 0).astype(np.int32)
    weights = np.ones((batch, length), np.float32)
    weights[:, length // 2 - 1] = 0.0  # no target across the document boundary
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": weights,
        "positions": positions,
        "segment_ids": segments,
    }


def _run(overrides, devices, steps=2):
    cfg = load_config(None, TINY + overrides)
    mesh = make_mesh(cfg.mesh, devices)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = init_state(cfg.model, tx, mesh, seed=0)
    train_step = compile_train_step(cfg, tx, schedule, shardings, mesh)
    losses = []
    with activate(mesh):
        for i in range(steps):
            state, metrics = train_step(state, shard_batch(_batch(i), mesh))
            losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def single_device_run():
    return _run(["mesh.data=1"], jax.devices()[:1])


@pytest.mark.parametrize(
    "mesh", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)], ids=lambda m: "x".join(map(str, m))
)
def test_sharded_step_equals_single_device(single_device_run, mesh):
    data, fsdp, tensor = mesh
    overrides = [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]
    state, losses = _run(overrides, jax.devices())
    ref_state, ref_losses = single_device_run
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for got, want in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads, mesh", [(2, (1, 1, 8)), (1, (2, 2, 2)), (4, (1, 2, 4))])
def test_key_value_heads_split_where_they_divide_and_are_replicated_where_not(kv_heads, mesh):
    """Grouped-query attention over more tensor shards than key/value heads (2 over 8, 1 over
    2) keeps every key/value head on each shard; 4 over 4 splits them. Either way the steps
    equal one device's."""
    state = _equals_single_device([f"model.num_kv_heads={kv_heads}"], mesh)
    attention = _leaf(state.params, "decoder/layers/self_attention")
    assert attention["query"]["kernel"].sharding.spec[2] == "tensor"
    split = kv_heads % mesh[2] == 0
    for name in ("key", "value"):
        assert attention[name]["kernel"].sharding.spec[2] == ("tensor" if split else None)


def test_query_and_key_norms_over_all_heads_split_with_the_heads():
    """OLMo 2's blocks: the norms of queries and keys over all heads' features together (their
    scales split with the heads, the mean over every shard's) and on each sublayer's output."""
    olmo = [
        "model.position_embedding=rotary",
        "model.norm=rmsnorm",
        "model.norm_position=output",
        "model.qk_norm=true",
        "model.qk_norm_scope=heads",
        "model.num_kv_heads=4",
    ]
    state = _equals_single_device(olmo, (1, 2, 4))
    attention = _leaf(state.params, "decoder/layers/self_attention")
    for name in ("query_norm", "key_norm"):
        assert tuple(attention[name]["scale"].sharding.spec) == (None, "tensor", None)


@pytest.mark.slow
def test_experts_split_as_dense_mlps_and_route_within_rows():
    """Mixture-of-experts blocks with a capacity (choices dropped while training) and both
    router losses: the steps equal one device's (routing stays within each row), and each
    expert's weights split as a dense MLP's, the experts' axis whole on every device."""
    experts = [
        "model.num_experts=4",
        "model.mlp_type=gated",
        "model.activation=silu",
        "model.expert_capacity_factor=1.0",
        "train.router_z_loss=0.01",
    ]
    state = _equals_single_device(experts, (2, 2, 2))
    mlp = _leaf(state.params, "decoder/layers/mlp")
    assert tuple(mlp["wi"].sharding.spec) == (None, None, "fsdp", "tensor")
    assert tuple(mlp["wo"].sharding.spec) == (None, None, "tensor", "fsdp")


def _equals_single_device(overrides: list[str], mesh: tuple[int, int, int]):
    """The state after two steps on the 8 devices as a (data, fsdp, tensor) `mesh`, checked
    against one device's steps: the same losses and parameters."""
    data, fsdp, tensor = mesh
    sharded = [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]
    state, losses = _run([*overrides, *sharded], jax.devices())
    ref_state, ref_losses = _run([*overrides, "mesh.data=1"], jax.devices()[:1])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for got, want in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    return state


def test_sharded_adafactor_steps_equal_single_device():
    """Adafactor's factored row and column statistics (replicated, unlike the parameters they
    describe) update alike on one device and on a 2 x 2 x 2 mesh."""
    mesh = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    state, losses = _run([*FACTORED_ADAFACTOR, *mesh], jax.devices(), steps=3)
    ref_state, ref_losses = _run([*FACTORED_ADAFACTOR, "mesh.data=1"], jax.devices()[:1], steps=3)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, got), want in zip(leaves, jax.tree.leaves(ref_state), strict=True):
        if "'key']['bias']" in jax.tree_util.keystr(path):
            # Softmax ignores a shift of every score, so the keys' bias has a zero gradient up to
            # rounding, which Adafactor's relative steps scale up: noise, different per layout.
            continue
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    factored = [x.shape for x in jax.tree.leaves(state.opt_state) if x.shape == (2, 128)]
    assert len(factored) >= 2 * 4  # a row and a column for each attention kernel at least
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(state.opt_state) < size(state.params) / 10


def _leaf(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def test_parameters_and_optimizer_state_are_sharded_by_the_rules():
    state, _ = _run(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"], jax.devices(), steps=1)
    # Expected from the rules table: embed -> fsdp; vocab, mlp, heads -> tensor; layers unsharded.
    expected = {
        "token_embed/embedding": (("tensor", "fsdp"), (104 // 2, 32 // 2)),
        "decoder/layers/mlp/wi/kernel": ((None, "fsdp", "tensor"), (2, 16, 32)),
        "decoder/layers/mlp/wo/kernel": ((None, "tensor", "fsdp"), (2, 32, 16)),
        "decoder/layers/self_attention/query/kernel": (
            (None, "fsdp", "tensor", None),
            (2, 16, 4, 4),
        ),
        "decoder/layers/self_attention/out/kernel": ((None, "tensor", None, "fsdp"), (2, 4, 4, 16)),
        "decoder/final_norm/scale": ((), (32,)),
    }
    adam_state = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's scale_by_adam state
    for path, (spec, local_shape) in expected.items():
        for tree in (state.params, adam_state.mu, adam_state.nu):
            leaf = _leaf(tree, path)
            got = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
            want = tuple(spec) + (None,) * (leaf.ndim - len(spec))
            assert got == want, path
            assert leaf.addressable_shards[0].data.shape == local_shape, path


def test_batch_that_cannot_be_split_over_the_mesh_is_a_config_error():
    from jaxlm.errors import ConfigError
    from jaxlm.parallel import check_batch_size

    mesh = make_mesh(load_config(None, ["mesh.data=4", "mesh.fsdp=2"]).mesh)
    with pytest.raises(ConfigError, match="data.batch_size"):
        check_batch_size(6, mesh)
