"""Sinusoidal, rotary and token embeddings and T5's relative position buckets against formulas
evaluated in float64 or plain Python."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers.alibi import alibi_bias, alibi_slopes
from jaxlm.layers.embeddings import (
    LearnedPositions,
    SinusoidalPositions,
    TokenEmbedding,
    apply_rotary,
    rotary_frequencies,
    sinusoidal_table,
)
from jaxlm.layers.relative_positions import RelativePositionBias, relative_position_buckets


def vaswani_table(num_positions, features):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), elementwise."""
    table = np.zeros((num_positions, features), np.float64)
    for p in range(num_positions):
        for j in range(features):
            angle = p / 10_000 ** (2 * (j // 2) / features)
            table[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


def naive_rotary(x, positions, base=10_000.0):
    """Rotate each pair (i, i + d/2) by the angle p * base^(-i / (d/2)), one element at a time."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    batch, length, heads, dim = x.shape
    half = dim // 2
    for b in range(batch):
        for t in range(length):
            for h in range(heads):
                for i in range(half):
                    angle = float(positions[b, t]) * base ** (-i / half)
                    c, s = math.cos(angle), math.sin(angle)
                    x1, x2 = x[b, t, h, i], x[b, t, h, i + half]
                    out[b, t, h, i] = x1 * c - x2 * s
                    out[b, t, h, i + half] = x2 * c + x1 * s
    return out


@pytest.mark.parametrize("num_positions, features", [(64, 16), (33, 7), (5, 1)])
def test_sinusoidal_table_matches_vaswani(num_positions, features):
    table = sinusoidal_table(num_positions, features)
    assert table.shape == (num_positions, features) and table.dtype == np.float32
    np.testing.assert_allclose(table, vaswani_table(num_positions, features), rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_positions, features", [(64, 16), (33, 7)])
def test_sinusoidal_halves_match_marian(num_positions, features):
    """Marian's table: angle[p, j] = p / 10000^(2 (j // 2) / d), the sines of its even columns
    first, then the cosines of its odd ones."""
    angle = np.array(
        [
            [p / 10000 ** (2 * (j // 2) / features) for j in range(features)]
            for p in range(num_positions)
        ]
    )
    marian = np.concatenate([np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])], axis=1)
    table = sinusoidal_table(num_positions, features, halves=True)
    np.testing.assert_allclose(table, marian, rtol=0, atol=1e-6)
    out = SinusoidalPositions(num_positions, features, halves=True).apply({}, jnp.arange(3)[None])
    np.testing.assert_array_equal(out[0], table[:3])


def test_sinusoidal_positions_gather_per_row():
    positions = np.array([[0, 1, 2, 3, 4], [7, 7, 0, 19, 3]])
    out = SinusoidalPositions(20, 10).apply({}, jnp.asarray(positions))
    expected = vaswani_table(20, 10)[positions]
    assert out.shape == (2, 5, 10)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_learned_positions_gather_per_row():
    module = LearnedPositions(12, 6)
    positions = jnp.asarray([[0, 1, 2], [11, 4, 4]])
    params = nn.unbox(module.init(jax.random.key(0), positions)["params"])
    table = np.asarray(params["embedding"])
    assert table.shape == (12, 6)
    np.testing.assert_array_equal(module.apply({"params": params}, positions), table[positions])


@pytest.mark.parametrize("beta_fast, beta_slow", [(32.0, 1.0), (8.0, 2.0)])
def test_yarn_frequencies_follow_the_paper(beta_fast, beta_slow):
    """YaRN over 64-wide heads, base 10,000, 2,048 original positions, factor 4, against a loop
    over the formula of Peng et al. (2023): index i turns 2,048 / (2π / θ_i) times; those that
    turn more than beta_fast times keep θ_i, fewer than beta_slow times get θ_i / 4, and the
    indices between blend linearly (the ends rounded outwards)."""
    head_dim, base, length, factor = 64, 10_000.0, 2048, 4.0
    got = rotary_frequencies(
        head_dim,
        base,
        "yarn",
        factor,
        original_max_len=length,
        beta_fast=beta_fast,
        beta_slow=beta_slow,
    )
    theta = [base ** (-2 * i / head_dim) for i in range(head_dim // 2)]

    def index(rotations):  # solves length * theta_i / (2 pi) = rotations for i
        return head_dim * math.log(length / (2 * math.pi * rotations)) / (2 * math.log(base))

    low, high = math.floor(index(beta_fast)), math.ceil(index(beta_slow))
    expected = []
    for i, t in enumerate(theta):
        share = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: kept, 1: divided
        expected.append((1 - share) * t + share * t / factor)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    turns = [length * t / (2 * math.pi) for t in theta]
    assert got[0] == np.float32(theta[0]) and turns[0] > beta_fast
    assert got[-1] == np.float32(theta[-1] / factor) and turns[-1] < beta_slow


def test_longrope_divides_each_frequency_by_its_factor():
    factors = [1.0, 2.5, 4.0, 9.0]
    got = rotary_frequencies(8, 500.0, "longrope", divisors=factors)
    expected = [500.0 ** (-i / 4) / f for i, f in enumerate(factors)]
    np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_rotary_amplitude_scales_every_rotated_feature():
    x = np.random.default_rng(1).normal(size=(1, 4, 2, 8)).astype(np.float32)
    positions = jnp.arange(4)[None]
    np.testing.assert_allclose(
        apply_rotary(x, positions, amplitude=1.25), 1.25 * apply_rotary(x, positions), rtol=1e-6
    )


@pytest.mark.parametrize("base", [10_000.0, 500.0])
def test_apply_rotary_matches_naive_loop(base):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [40, 3, 17, 0, 9]])
    out = jax.jit(apply_rotary, static_argnames="base")(x, jnp.asarray(positions), base=base)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, naive_rotary(x, positions, base), rtol=1e-5, atol=1e-5)


def test_partial_rotary_rotates_the_leading_features_alone():
    """Frequencies for 4 of 10 features: those 4 rotate as a 4-wide head would, the other 6
    pass unchanged."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 3, 10)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [40, 3, 17, 0, 9]])
    out = np.asarray(apply_rotary(x, jnp.asarray(positions), frequencies=rotary_frequencies(4)))
    np.testing.assert_allclose(out[..., :4], naive_rotary(x[..., :4], positions), atol=1e-5)
    np.testing.assert_array_equal(out[..., 4:], x[..., 4:])


def test_apply_rotary_keeps_dtype_and_norm():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 4, 2, 6)), jnp.bfloat16)
    positions = jnp.asarray([[0, 5, 9, 30]])
    out = apply_rotary(x, positions)
    assert out.dtype == jnp.bfloat16
    x64, out64 = np.asarray(x, np.float64), np.asarray(out, np.float64)
    np.testing.assert_allclose(
        np.linalg.norm(out64, axis=-1), np.linalg.norm(x64, axis=-1), rtol=2e-2
    )
    np.testing.assert_array_equal(out[:, 0], x[:, 0])  # position 0: no rotation


def test_rotary_scores_depend_only_on_relative_position():
    """q·k after rotary at positions (m, n) equals that at (m + s, n + s) for any shift s."""
    rng = np.random.default_rng(2)
    dim, shifts = 16, np.array([0, 1, 7, 100, 513])
    q = rng.normal(size=dim).astype(np.float32)
    k = rng.normal(size=dim).astype(np.float32)

    def scores(m, n):
        # One row per shift: q at m + s, k at n + s. Shapes [shifts, 1, 1, dim].
        rows = len(shifts)
        q_rot = apply_rotary(
            jnp.broadcast_to(q, (rows, 1, 1, dim)), jnp.asarray(m + shifts)[:, None]
        )
        k_rot = apply_rotary(
            jnp.broadcast_to(k, (rows, 1, 1, dim)), jnp.asarray(n + shifts)[:, None]
        )
        return np.asarray(jnp.sum(q_rot * k_rot, axis=-1)).ravel()

    for m, n in [(3, 0), (0, 3), (10, 10), (25, 4)]:
        s = scores(m, n)
        np.testing.assert_allclose(s, np.full_like(s, s[0]), rtol=1e-4, atol=1e-4)
    # And they do depend on the relative position.
    assert abs(scores(3, 0)[0] - scores(5, 0)[0]) > 1e-3
    np.testing.assert_allclose(scores(4, 4)[0], float(q @ k), rtol=1e-5)


def test_token_embedding_lookup_and_attend():
    module = TokenEmbedding(num_embeddings=13, features=6)
    tokens = jnp.asarray([[0, 5, 12], [3, 3, 7]])
    params = nn.unbox(module.init(jax.random.key(0), tokens)["params"])
    table = np.asarray(params["embedding"], np.float64)
    assert table.shape == (13, 6)
    np.testing.assert_array_equal(module.apply({"params": params}, tokens), table[tokens])
    x = np.random.default_rng(3).normal(size=(2, 4, 6)).astype(np.float32)
    logits = module.apply({"params": params}, jnp.asarray(x), method=TokenEmbedding.attend)
    assert logits.shape == (2, 4, 13)
    np.testing.assert_allclose(logits, x.astype(np.float64) @ table.T, rtol=1e-5, atol=1e-6)


def t5_bucket(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Raffel et al. (2020)'s bucket of one key - query distance, in Python floats."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket = num_buckets if relative > 0 else 0
        distance = abs(relative)
    else:
        distance = max(-relative, 0)
    exact = num_buckets // 2
    if distance < exact:
        return bucket + distance
    spread = math.log(distance / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    return bucket + min(exact + int(spread), num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20)])
def test_relative_position_buckets_match_the_t5_formula(bidirectional, num_buckets, max_distance):
    relative = np.arange(-300, 301)
    got = relative_position_buckets(
        jnp.asarray(relative),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    want = [t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in relative]
    np.testing.assert_array_equal(got, want)
    unused = {num_buckets // 2} if bidirectional else set()  # a key after the query at 0
    assert set(want) == set(range(num_buckets)) - unused  # distances to 300 reach the rest


def test_relative_position_bias_looks_up_each_pair_per_head():
    """bias[b, h, q, k] = table[bucket(key position - query position), h], per row."""
    module = RelativePositionBias(num_heads=3, num_buckets=8, max_distance=20)
    positions = jnp.array([[0, 1, 2, 3], [0, 1, 0, 1]])  # the second row packs two segments
    params = module.init(jax.random.key(0), positions, positions)
    table = np.asarray(nn.unbox(params)["params"]["embedding"])
    bias = np.asarray(module.apply(params, positions, positions))
    assert bias.shape == (2, 3, 4, 4)
    for b, row in enumerate(np.asarray(positions)):
        for q, k in np.ndindex(4, 4):
            bucket = t5_bucket(int(row[k] - row[q]), True, 8, 20)
            np.testing.assert_array_equal(bias[b, :, q, k], table[bucket])


def test_alibi_slopes_are_the_papers_and_the_bias_falls_with_distance():
    """Press et al. 2022: 8 heads slope 1/2, 1/4, ..., 1/256; 16 heads 1/2^0.5, 1/2, ..., 1/256.
    The bias is -slope x (query position - key position), per row's positions."""
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-k for k in range(1, 9)], rtol=1e-7)
    np.testing.assert_allclose(alibi_slopes(16), [2.0 ** (-k / 2) for k in range(1, 17)], rtol=1e-7)
    # 12 heads: the 8 heads' slopes, then the odd ones of 16 heads'
    expected = [2.0**-k for k in range(1, 9)] + [2.0 ** (-k / 2) for k in (1, 3, 5, 7)]
    np.testing.assert_allclose(alibi_slopes(12), expected, rtol=1e-7)
    queries = np.array([[3, 4], [0, 1]])
    keys = np.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]])
    bias = np.asarray(alibi_bias(12, jnp.asarray(queries), jnp.asarray(keys)))
    reference = np.zeros((2, 12, 2, 5))
    for row, head, q, k in np.ndindex(reference.shape):
        reference[row, head, q, k] = -expected[head] * (queries[row, q] - keys[row, k])
    np.testing.assert_allclose(bias, reference, rtol=1e-6)
