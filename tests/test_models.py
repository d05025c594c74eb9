"""The three model families on tiny configs: shapes, causality, padding, packing, vocabulary
padding, remat, bf16 compute, and parameter counts against published figures and formulas."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import ModelConfig, load_config
from jaxlm.decoding.cache import init_cache, step_fn
from jaxlm.models import build_model
from jaxlm.models.summary import abstract_params, count_parameters

VOCAB, PADDED_VOCAB, LENGTH, EMBED = 100, 128, 16, 32
TINY = TINY_MODEL  # embed_dim EMBED, vocab_size VOCAB, max_len LENGTH
VARIANTS = {
    "gpt": ["model.family=gpt"],
    # Rotary, grouped-query attention, RMSNorm, an untied output head, no biases, jax backend.
    "gpt-rotary": [
        "model.family=gpt",
        "model.position_embedding=rotary",
        "model.num_kv_heads=2",
        "model.norm=rmsnorm",
        "model.tie_embeddings=false",
        "model.use_bias=false",
        "model.attention_backend=jax",
    ],
    # ALiBi, the embedded tokens normalized, each sublayer's output normalized, query/key norms
    # over all heads (BLOOM's positions in OLMo 2's blocks)
    "gpt-alibi": [
        "model.family=gpt",
        "model.position_embedding=alibi",
        "model.embed_norm=true",
        "model.norm=rmsnorm",
        "model.norm_position=output",
        "model.qk_norm=true",
        "model.qk_norm_scope=heads",
    ],
    # each block's MLP four gated experts, two a token (Mixtral's blocks)
    "gpt-moe": [
        "model.family=gpt",
        "model.position_embedding=rotary",
        "model.norm=rmsnorm",
        "model.use_bias=false",
        "model.mlp_type=gated",
        "model.activation=silu",
        "model.num_experts=4",
        "model.experts_per_token=2",
    ],
    "bert": [
        "model.family=bert",
        "model.heads=[mlm,nsp,classifier]",
        "model.num_classes=3",
        "model.norm_position=post",
        "model.activation=gelu_exact",
    ],
    "seq2seq": [
        "model.family=seq2seq",
        "model.num_decoder_layers=3",
        "model.norm_position=post",
        "model.position_embedding=sinusoidal",
        "model.scale_embeddings=true",
        "model.activation=relu",
    ],
    "t5": [  # relative position bias, pre-RMSNorm, no biases, gated GELU, own output head
        "model.family=seq2seq",
        "model.num_decoder_layers=3",
        "model.position_embedding=relative",
        "model.relative_buckets=8",
        "model.relative_max_distance=12",
        "model.norm=rmsnorm",
        "model.use_bias=false",
        "model.mlp_type=gated",
        "model.tie_embeddings=false",
    ],
}
NEG = np.finfo(np.float32).min


def tiny_config(variant: str, *overrides: str) -> ModelConfig:
    return load_config(None, [*TINY, *VARIANTS[variant], *overrides]).model


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Parameters of the model's shapes with random values everywhere (norm scales near 1)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "scale":
            return jnp.asarray(1 + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)
        return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, nn.unbox(abstract_params(cfg)))


@functools.cache
def tiny_model(variant: str, *overrides: str):
    """(config, params, jitted apply(params, *args, **kwargs)) for a tiny model, built once.

    The params are those of the variant without overrides, so remat and bf16 builds share them.
    """
    cfg = tiny_config(variant, *overrides)
    model = build_model(cfg)
    apply = jax.jit(
        lambda params, *args, **kwargs: model.apply({"params": params}, *args, **kwargs)
    )
    return cfg, random_params(tiny_config(variant)), apply


def tokens(*shape, seed=0):
    """Random ids of real (unpadded) vocabulary entries."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, size=shape), jnp.int32)


def logits_of(variant, outputs):
    """The vocabulary logits: BERT returns a dict with its MLM logits."""
    return outputs["mlm_logits"] if variant == "bert" else outputs


# --- shapes -------------------------------------------------------------------------------


def test_output_shapes():
    for variant in ("gpt", "gpt-rotary"):
        cfg, params, apply = tiny_model(variant)
        assert cfg.padded_vocab_size == PADDED_VOCAB
        out = apply(params, tokens(2, LENGTH))
        assert out.shape == (2, LENGTH, PADDED_VOCAB) and out.dtype == jnp.float32

    _, params, apply = tiny_model("bert")
    out = apply(params, tokens(2, LENGTH))
    chex.assert_trees_all_equal_shapes_and_dtypes(
        out,
        {
            "hidden": jnp.zeros((2, LENGTH, EMBED)),
            "pooled": jnp.zeros((2, EMBED)),
            "mlm_logits": jnp.zeros((2, LENGTH, PADDED_VOCAB)),
            "nsp_logits": jnp.zeros((2, 2)),
            "class_logits": jnp.zeros((2, 3)),
        },
    )

    _, params, apply = tiny_model("seq2seq")
    out = apply(params, tokens(2, 11), tokens(2, LENGTH, seed=1))
    assert out.shape == (2, LENGTH, PADDED_VOCAB) and out.dtype == jnp.float32


# --- causality ----------------------------------------------------------------------------


def changed_futures(base: jax.Array) -> jax.Array:
    """Row 0: the base sequence; row t + 1: the base with token t + 1 replaced."""
    rows = np.repeat(np.asarray(base)[None], LENGTH, axis=0)
    for t in range(LENGTH - 1):
        rows[t + 1, t + 1] = (rows[t + 1, t + 1] + 1 + t) % VOCAB
    return jnp.asarray(rows)


def assert_causal(out):
    out = np.asarray(out)
    for t in range(LENGTH - 1):
        np.testing.assert_allclose(out[t + 1, : t + 1], out[0, : t + 1], rtol=0, atol=1e-6)
        assert np.abs(out[t + 1, t + 1 :] - out[0, t + 1 :]).max() > 1e-4  # and not vacuously


@pytest.mark.parametrize("variant", ["gpt", "gpt-rotary", "gpt-alibi", "gpt-moe"])
def test_gpt_is_causal(variant):
    """Changing token t + 1 never changes the logits at positions <= t."""
    _, params, apply = tiny_model(variant)
    assert_causal(apply(params, changed_futures(tokens(LENGTH))))


@pytest.mark.parametrize("variant", ["seq2seq", "t5"])
def test_seq2seq_decoder_is_causal(variant):
    _, params, apply = tiny_model(variant)
    source = jnp.broadcast_to(tokens(11, seed=1), (LENGTH, 11))
    assert_causal(apply(params, source, changed_futures(tokens(LENGTH))))


# --- padding and packing ------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["gpt", "gpt-rotary", "gpt-alibi", "gpt-moe"])
def test_gpt_padding_invariance(variant):
    """Appending padding (segment id 0, arbitrary token ids) leaves real positions unchanged."""
    _, params, apply = tiny_model(variant)
    real = tokens(2, 10)
    padded = jnp.concatenate([real, tokens(2, LENGTH - 10, seed=1)], axis=1)
    segments = jnp.asarray([[1] * 10 + [0] * (LENGTH - 10)] * 2)
    positions = jnp.broadcast_to(jnp.arange(LENGTH), (2, LENGTH))
    out = apply(params, padded, positions, segments)
    np.testing.assert_allclose(out[:, :10], apply(params, real), rtol=1e-5, atol=1e-5)


def test_bert_padding_invariance():
    """A padded batch of two lengths gives each row's unpadded hidden states and heads."""
    _, params, apply = tiny_model("bert")
    lengths = (9, 13)
    rows = [tokens(1, n, seed=n) for n in lengths]
    types = [jnp.asarray([[0] * (n // 2) + [1] * (n - n // 2)]) for n in lengths]
    pad = tokens(1, LENGTH, seed=99)
    batch = jnp.concatenate([jnp.concatenate([r, pad[:, r.shape[1] :]], 1) for r in rows])
    batch_types = jnp.concatenate([jnp.pad(t, ((0, 0), (0, LENGTH - t.shape[1]))) for t in types])
    segments = jnp.asarray([[1] * n + [0] * (LENGTH - n) for n in lengths])
    padded = apply(params, batch, batch_types, segments)
    for i, (row, row_types) in enumerate(zip(rows, types, strict=True)):
        alone = apply(params, row, row_types)
        n = row.shape[1]
        np.testing.assert_allclose(padded["hidden"][i, :n], alone["hidden"][0], atol=1e-5)
        np.testing.assert_allclose(padded["mlm_logits"][i, :n], alone["mlm_logits"][0], atol=1e-5)
        for key in ("pooled", "nsp_logits", "class_logits"):
            np.testing.assert_allclose(padded[key][i], alone[key][0], atol=1e-5)


@pytest.mark.parametrize("variant", ["seq2seq", "t5"])
def test_seq2seq_source_padding_invariance(variant):
    """Padding the source (source_segments 0) leaves the decoder logits unchanged."""
    _, params, apply = tiny_model(variant)
    source, target = tokens(2, 10), tokens(2, LENGTH, seed=1)
    padded = jnp.concatenate([source, tokens(2, 4, seed=2)], axis=1)
    source_segments = jnp.asarray([[1] * 10 + [0] * 4] * 2)
    out = apply(params, padded, target, source_segments)
    np.testing.assert_allclose(out, apply(params, source, target), rtol=1e-5, atol=1e-5)


def test_relative_bias_of_default_positions_serves_every_row():
    """Without positions the relative position bias is computed once for the batch; given
    explicitly (a bias per row, as for packed rows), the same positions give the same logits,
    and shifting a row's positions does not change it (only distances count)."""
    _, params, apply = tiny_model("t5")
    source, target = tokens(2, 10), tokens(2, LENGTH, seed=1)
    positions = [jnp.broadcast_to(jnp.arange(n), (2, n)) for n in (10, LENGTH)]
    once = apply(params, source, target)
    for shift in (0, 5):
        per_row = apply(
            params, source, target, None, None, positions[0] + shift, positions[1] + shift
        )
        np.testing.assert_allclose(per_row, once, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["gpt", "gpt-rotary"])
def test_gpt_without_segment_ids_is_one_document_per_row(variant):
    """No segment ids (a causal mask alone) gives the logits of segment ids all 1."""
    _, params, apply = tiny_model(variant)
    rows = tokens(2, LENGTH)
    np.testing.assert_allclose(
        apply(params, rows), apply(params, rows, None, jnp.ones_like(rows)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("variant", ["gpt", "gpt-rotary", "gpt-alibi", "gpt-moe"])
def test_gpt_packing(variant):
    """Two documents packed in one row (segments 1, 2; positions restart) = each run alone."""
    _, params, apply = tiny_model(variant)
    first, second = tokens(1, 6, seed=1), tokens(1, 10, seed=2)
    packed = jnp.concatenate([first, second], axis=1)
    positions = jnp.asarray([list(range(6)) + list(range(10))])
    segments = jnp.asarray([[1] * 6 + [2] * 10])
    out = apply(params, packed, positions, segments)
    np.testing.assert_allclose(out[:, :6], apply(params, first), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], apply(params, second), rtol=1e-5, atol=1e-5)


# --- vocabulary padding -------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_vocabulary_is_never_predicted(variant):
    cfg, params, apply = tiny_model(variant)
    args = (tokens(2, 11, seed=3),) if cfg.family == "seq2seq" else ()
    logits = np.asarray(logits_of(variant, apply(params, *args, tokens(2, LENGTH))))
    assert logits.shape[-1] == cfg.padded_vocab_size > cfg.vocab_size
    np.testing.assert_array_equal(logits[..., VOCAB:], NEG)
    assert np.isfinite(logits[..., :VOCAB]).all() and (logits[..., :VOCAB] > NEG).all()
    assert logits.argmax(-1).max() < VOCAB


# --- remat and bf16 -----------------------------------------------------------------------


def loss_and_grads(apply, params, *args):
    """Mean next-token cross-entropy over the real vocabulary, and its gradients."""
    labels = jnp.roll(args[-1], -1, axis=1)

    def loss(p):
        logits = apply(p, *args)[..., :VOCAB]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, labels[..., None], axis=-1).mean()

    return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_gives_the_same_logits_and_gradients():
    _, params, apply = tiny_model("gpt")
    _, _, apply_remat = tiny_model("gpt", "model.remat_policy=full")
    inputs = tokens(2, LENGTH)
    np.testing.assert_allclose(apply_remat(params, inputs), apply(params, inputs), atol=1e-6)
    loss, grads = loss_and_grads(apply, params, inputs)
    loss_remat, grads_remat = loss_and_grads(apply_remat, params, inputs)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    chex.assert_trees_all_close(grads_remat, grads, rtol=1e-5, atol=1e-7)


def cached_logits(cfg, params, inputs):
    """The logits of `inputs` [batch, LENGTH] fed one token per step through the cache."""
    step, cache, steps = jax.jit(step_fn(cfg)), init_cache(cfg, inputs.shape[0], LENGTH), []
    positions, segments = jnp.broadcast_to(jnp.arange(LENGTH), inputs.shape), jnp.ones_like(inputs)
    for i in range(LENGTH):
        at = slice(i, i + 1)
        logits, cache = step(params, cache, inputs[:, at], positions[:, at], segments[:, at], None)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1)


def test_alternating_window_layers_agree_scanned_unrolled_rematerialized_and_cached():
    """With a window in layer 0 and full attention in layer 1 (picked inside the scan by
    `lax.cond`): the same logits and gradients unrolled and with remat; the same logits step by
    step over a cache (where each layer's mask is picked in Python); and other logits than a
    window in both layers or in neither."""
    alternating = ("model.sliding_window=3", "model.global_attention_every=2")
    cfg, params, apply = tiny_model("gpt", *alternating)
    inputs = tokens(2, LENGTH, seed=5)
    expected = apply(params, inputs)
    loss, grads = loss_and_grads(apply, params, inputs)
    for overrides in (["model.scan_unroll=0"], ["model.remat_policy=full"]):
        _, _, other = tiny_model("gpt", *alternating, *overrides)
        np.testing.assert_allclose(other(params, inputs), expected, rtol=1e-5, atol=1e-5)
        other_loss, other_grads = loss_and_grads(other, params, inputs)
        np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
        chex.assert_trees_all_close(other_grads, grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached_logits(cfg, params, inputs), expected, rtol=1e-5, atol=1e-5)
    for overrides in (["model.sliding_window=3"], []):
        _, _, other = tiny_model("gpt", *overrides)
        assert np.abs(other(params, inputs) - expected).max() > 1e-2


@pytest.mark.parametrize("layout", ["parallel", "parallel_shared_norm"])
def test_parallel_blocks_agree_unrolled_rematerialized_and_cached(layout):
    """Parallel blocks with rotary positions on half of each head: the same logits unrolled,
    with remat and step by step over a cache; other logits than sequential blocks, or than
    rotating whole heads; one norm per block when shared."""
    overrides = ("model.rotary_dim=4", f"model.block_layout={layout}")
    cfg = tiny_config("gpt-rotary", *overrides)
    params = random_params(cfg)
    assert ("mlp_norm" in params["decoder"]["layers"]) == (layout == "parallel")
    inputs = tokens(2, LENGTH, seed=7)
    expected = tiny_model("gpt-rotary", *overrides)[2](params, inputs)
    for other in (["model.scan_unroll=0"], ["model.remat_policy=full"]):
        got = tiny_model("gpt-rotary", *overrides, *other)[2](params, inputs)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached_logits(cfg, params, inputs), expected, rtol=1e-5, atol=1e-5)
    whole_heads = tiny_model("gpt-rotary", f"model.block_layout={layout}")[2](params, inputs)
    assert np.abs(whole_heads - expected).max() > 1e-2
    if layout == "parallel":
        sequential = tiny_model("gpt-rotary", "model.rotary_dim=4")[2](params, inputs)
        assert np.abs(sequential - expected).max() > 1e-2


@pytest.mark.slow
def test_experts_agree_unrolled_rematerialized_and_cached():
    """Mixture-of-experts blocks: the same logits and gradients unrolled and with remat, the
    same logits step by step over a cache (each step routes its one token); other logits when
    each token takes one expert instead of two."""
    cfg, params, apply = tiny_model("gpt-moe")
    inputs = tokens(2, LENGTH, seed=9)
    expected = apply(params, inputs)
    loss, grads = loss_and_grads(apply, params, inputs)
    for overrides in (["model.scan_unroll=0"], ["model.remat_policy=full"]):
        _, _, other = tiny_model("gpt-moe", *overrides)
        np.testing.assert_allclose(other(params, inputs), expected, rtol=1e-5, atol=1e-5)
        other_loss, other_grads = loss_and_grads(other, params, inputs)
        np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
        chex.assert_trees_all_close(other_grads, grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached_logits(cfg, params, inputs), expected, rtol=1e-5, atol=1e-5)
    one_expert = tiny_model("gpt-moe", "model.experts_per_token=1")[2](params, inputs)
    assert np.abs(one_expert - expected).max() > 1e-2


def test_remat_with_cross_attention_gives_the_same_logits():
    _, params, apply = tiny_model("seq2seq")
    _, _, apply_remat = tiny_model("seq2seq", "model.remat_policy=full")
    args = (tokens(2, 11, seed=3), tokens(2, LENGTH))
    np.testing.assert_allclose(apply_remat(params, *args), apply(params, *args), atol=1e-6)


@pytest.mark.parametrize("variant", ["gpt", "bert", "seq2seq", "t5"])
def test_bf16_compute_keeps_float32_params(variant):
    cfg, params, apply = tiny_model(variant)
    cfg16, _, apply16 = tiny_model(variant, "model.dtype=bfloat16")
    assert cfg16.compute_dtype == jnp.bfloat16
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(abstract_params(cfg16)))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    args = (tokens(2, 11, seed=3),) if cfg.family == "seq2seq" else ()
    args = (*args, tokens(2, LENGTH))
    logits = np.asarray(logits_of(variant, apply(params, *args)))[..., :VOCAB]
    logits16 = logits_of(variant, apply16(params, *args))
    assert logits16.dtype == jnp.float32
    logits16 = np.asarray(logits16)[..., :VOCAB]
    scale = np.abs(logits).max()
    np.testing.assert_allclose(logits16, logits, rtol=0, atol=0.05 * scale)
    # Much closer than unrelated logits would be.
    assert np.abs(logits16 - logits).mean() < 0.02 * np.abs(logits).mean()


# --- parameter counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, published",
    [
        ("gpt2-small", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
        ("bert-base", 109_482_240),
        ("bert-large", 335_141_888),
    ],
)
def test_preset_parameter_counts_match_published(preset, published):
    """GPT-2 (LM head tied) and BERT (encoder + pooler) counts as in the HF checkpoints."""
    assert count_parameters(load_config(preset).model) == published


def expected_parameters(cfg: ModelConfig) -> int:
    """The parameter count worked out by hand from the config."""
    d, m, V = cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size
    bias = 1 if cfg.use_bias else 0
    q = cfg.num_heads * cfg.resolved_head_dim
    kv = (cfg.num_kv_heads or cfg.num_heads) * cfg.resolved_head_dim
    norm = d if cfg.norm == "rmsnorm" else 2 * d
    self_attention = d * (q + 2 * kv) + q * d + bias * (q + 2 * kv + d)
    cross_attention = 3 * d * q + q * d + bias * (3 * q + d)
    mlp = (3 if cfg.mlp_type == "gated" else 2) * d * m + bias * (m + d)
    if cfg.num_experts:  # that many MLPs and a router, without biases
        mlp = cfg.num_experts * (mlp + d)
    embeddings = V * d + (cfg.max_len * d if cfg.position_embedding == "learned" else 0)
    final_norm = norm if cfg.norm_position == "pre" else 0
    lm_head = 0 if cfg.tie_embeddings else d * V
    encoder_layer = self_attention + mlp + 2 * norm
    if cfg.family == "gpt":
        return embeddings + cfg.num_layers * encoder_layer + final_norm + lm_head
    if cfg.family == "seq2seq":
        decoder_layer = self_attention + cross_attention + mlp + 3 * norm
        # Two position tables when learned (source and target), two [buckets, heads] bias
        # tables when relative (encoder and decoder); none when sinusoidal.
        positions = {
            "learned": cfg.max_len * d,
            "relative": 2 * cfg.relative_buckets * cfg.num_heads,
        }.get(cfg.position_embedding, 0)
        return (
            embeddings
            + positions
            + cfg.num_layers * encoder_layer
            + cfg.decoder_layers * decoder_layer
            + 2 * final_norm
            + lm_head
        )
    # bert: token types, embedding norm (post-LN), pooler and heads.
    heads = {
        "mlm": d * d + d + 2 * d + V,  # transform, its LayerNorm, output bias (tied decoder)
        "nsp": d * 2 + 2,
        "classifier": d * cfg.num_classes + cfg.num_classes,
    }
    embed_norm = 2 * d if cfg.norm_position == "post" else 0
    return (
        embeddings
        + cfg.type_vocab_size * d
        + embed_norm
        + cfg.num_layers * encoder_layer
        + final_norm
        + d * d
        + d
        + sum(heads[h] for h in cfg.heads)
    )


@pytest.mark.parametrize(
    "variant, overrides",
    [
        ("gpt", ()),
        ("gpt", ("model.num_layers=3", "model.mlp_dim=80", "model.max_len=32")),
        ("gpt-rotary", ()),
        ("gpt-moe", ()),
        ("gpt", ("model.num_kv_heads=1", "model.head_dim=16", "model.tie_embeddings=false")),
        ("bert", ()),
        ("bert", ("model.heads=[]",)),
        ("seq2seq", ()),
        ("seq2seq", ("model.position_embedding=learned", "model.norm_position=pre")),
        ("t5", ()),
    ],
)
def test_tiny_parameter_counts_match_formula(variant, overrides):
    cfg = tiny_config(variant, *overrides)
    assert count_parameters(cfg) == expected_parameters(cfg)


def test_parameter_count_ignores_vocabulary_padding():
    padded, unpadded = tiny_config("gpt"), tiny_config("gpt", "model.vocab_multiple=1")
    assert padded.padded_vocab_size == PADDED_VOCAB and unpadded.padded_vocab_size == VOCAB
    assert count_parameters(padded) == count_parameters(unpadded)


def test_gpt_formula_by_hand():
    """The tiny GPT written out: embeddings, 2 pre-LN blocks, final norm; LM head tied."""
    d, m, layers = 32, 64, 2
    block = 2 * (2 * d) + (4 * d * d + 4 * d) + (d * m + m + m * d + d)
    expected = 100 * d + 16 * d + layers * block + 2 * d
    assert count_parameters(tiny_config("gpt")) == expected == 20_864


@pytest.mark.parametrize("family", ["gpt", "seq2seq"])
def test_output_bias_adds_to_the_real_vocabulary_logits(family):
    cfg = load_config(None, [*TINY, f"model.family={family}"]).model
    biased = load_config(None, [*TINY, f"model.family={family}", "model.output_bias=true"]).model
    params = nn.unbox(build_model(biased).init(jax.random.key(0), *_inputs(family)))["params"]
    bias = jax.random.normal(jax.random.key(1), (PADDED_VOCAB,))
    params["output_bias"] = {"bias": bias}
    without = {k: v for k, v in params.items() if k != "output_bias"}
    logits = build_model(biased).apply({"params": params}, *_inputs(family))
    plain = build_model(cfg).apply({"params": without}, *_inputs(family))
    np.testing.assert_allclose(logits[..., :VOCAB], plain[..., :VOCAB] + bias[:VOCAB], atol=1e-5)
    assert (logits[..., VOCAB:] == jnp.finfo(jnp.float32).min).all()


def _inputs(family):
    tokens = jnp.arange(2 * LENGTH).reshape(2, LENGTH) % VOCAB
    return (tokens, tokens) if family == "seq2seq" else (tokens,)
