"""Cached decoding against naive references: full forward passes over growing sequences,
exhaustive search over all continuations, and the uncached logits at every step."""

import dataclasses
import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params
from tiny import TINY_MODEL

from jaxlm.config import SampleConfig, load_config
from jaxlm.decoding.beam import beam_search
from jaxlm.decoding.cache import _layer, encode, init_cache, step_fn, unstack_layers
from jaxlm.decoding.conversation import ConversationCache
from jaxlm.decoding.loop import sample_tokens
from jaxlm.errors import JaxlmError
from jaxlm.generate import _compiled, generate, pad_rows, translate
from jaxlm.models import build_model, init_params

LARGE_INIT = ["model.max_len=32", "data.seq_len=32", "model.init_std=0.5"]  # peaked predictions


def _model(family, extra=()):
    cfg = load_config(None, [*TINY_MODEL, *LARGE_INIT, f"model.family={family}", *extra]).model
    return cfg, nn.unbox(init_params(cfg, jax.random.key(3)))


GPT, GPT_PARAMS = _model("gpt")
S2S, S2S_PARAMS = _model("seq2seq")
GPT_FORWARD = jax.jit(lambda t: build_model(GPT).apply({"params": GPT_PARAMS}, t))
S2S_FORWARD = jax.jit(lambda s, t: build_model(S2S).apply({"params": S2S_PARAMS}, s, t))


def _naive_greedy(forward, prompt, steps, eos_id, length=32):
    """Greedy decoding by full forward passes (no cache) over the tokens so far, padded to
    `length` for one compilation: the causal mask keeps the padding out of earlier positions."""
    tokens = list(prompt)
    for _ in range(steps):
        padded = jnp.asarray([tokens + [0] * (length - len(tokens))])
        tokens.append(int(jnp.argmax(forward(padded)[0, len(tokens) - 1])))
        if tokens[-1] in np.atleast_1d(eos_id):
            break
    return tokens[len(prompt) :]


def test_greedy_matches_naive_loop_for_prompts_of_different_lengths():
    prompts = [[2, 7, 9, 11, 4], [2, 30], [2, 5, 5, 8]]
    got = generate(
        GPT, GPT_PARAMS, prompts, SampleConfig(max_new_tokens=10, temperature=0), eos_id=-1
    )
    assert got == [_naive_greedy(GPT_FORWARD, p, 10, eos_id=-1) for p in prompts]


def test_prompts_whose_lengths_share_a_bucket_share_a_compiled_program():
    """Prompts pad to 16, 32, 48, ... tokens (at most max_len): lengths 2 and 9 run one program,
    20 another."""
    sample = SampleConfig(max_new_tokens=3, temperature=0.5, top_k=7)  # settings of its own
    for prompt in ([2, 7], [2, 7, 9, 11, 4, 5, 6, 8, 9]):
        generate(GPT, GPT_PARAMS, [prompt], sample, eos_id=-1)
    run = _compiled(GPT, dataclasses.replace(sample, prompts=[], seed=0), 3, -1, 0, None)
    assert run._cache_size() == 1
    generate(GPT, GPT_PARAMS, [[2] * 20], sample, eos_id=-1)
    assert run._cache_size() == 2


def test_longrope_decoding_equals_full_passes_across_the_switch_of_factors():
    """LongRoPE takes its long factors once a position reaches 6: greedy decoding and beam
    search after 4-token prompts cross there (and rerun the sequence), and still give what full
    passes over each sequence so far give: the same greedy tokens, and beam scores that are the
    sums of the passes' log-probabilities of the returned tokens."""
    longrope = [
        "model.position_embedding=rotary",
        "model.rope_scaling=longrope",
        "model.rope_original_max_len=6",
        "model.rope_short_factors=[1.0,1.5,2.0,4.0]",
        "model.rope_long_factors=[4.0,9.0,20.0,50.0]",
    ]
    cfg, params = _model("gpt", longrope)
    forward = jax.jit(lambda t: build_model(cfg).apply({"params": params}, t))
    prompts = [[2, 7, 9, 11], [2, 30, 5, 8]]
    expected = []
    for prompt in prompts:  # unpadded passes: their last position is the sequence's
        tokens = list(prompt)
        for _ in range(6):
            tokens.append(int(jnp.argmax(forward(jnp.asarray([tokens]))[0, -1])))
        expected.append(tokens[len(prompt) :])
    greedy = SampleConfig(max_new_tokens=6, temperature=0)
    assert generate(cfg, params, prompts, greedy, eos_id=-1) == expected
    tokens, segments = pad_rows(prompts, 0, left=True)
    beams = SampleConfig(num_beams=3, length_penalty=0.0, early_stopping=False)
    found, scores = beam_search(
        cfg, params, tokens, segments, sample=beams, max_new_tokens=6, eos_id=-1, pad_id=0
    )
    for prompt, hypotheses, row_scores in zip(prompts, np.asarray(found), scores, strict=True):
        for new, score in zip(hypotheses, np.asarray(row_scores), strict=True):
            sequence = [*prompt, *new]
            logp = sum(
                jax.nn.log_softmax(forward(jnp.asarray([sequence[:end]]))[0, -1])[sequence[end]]
                for end in range(len(prompt), len(sequence))
            )
            assert score == pytest.approx(float(logp), abs=1e-4)


def test_generation_stops_at_eos_per_row():
    prompts = [[2, 7, 9], [2, 30, 1]]
    eos = _naive_greedy(GPT_FORWARD, prompts[0], 10, eos_id=-1)[3]  # row 0's 4th token
    got = generate(
        GPT, GPT_PARAMS, prompts, SampleConfig(max_new_tokens=10, temperature=0), eos_id=eos
    )
    assert got == [_naive_greedy(GPT_FORWARD, p, 10, eos_id=eos) for p in prompts]
    assert got[0][-1] == eos and len(got[0]) <= 4


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generation_stops_at_the_first_of_several_stop_ids(num_beams):
    """Rows end at whichever of EOS and the stop tokens comes first (each row's 2nd token is
    one), greedily as the naive loop and with beams."""
    prompts = [[2, 7, 9], [2, 30, 1]]
    stops = tuple(_naive_greedy(GPT_FORWARD, p, 10, eos_id=-1)[1] for p in prompts)
    sample = SampleConfig(max_new_tokens=10, temperature=0, num_beams=num_beams)
    got = generate(GPT, GPT_PARAMS, prompts, sample, eos_id=stops)
    if num_beams == 1:
        assert got == [_naive_greedy(GPT_FORWARD, p, 10, eos_id=stops) for p in prompts]
        assert all(len(row) <= 2 for row in got)
    assert all(row[-1] in stops for row in got)


def test_seq2seq_greedy_matches_naive_loop():
    sources = [[5, 6, 7, 8, 9], [10, 11]]
    got = translate(
        S2S, S2S_PARAMS, sources, SampleConfig(max_new_tokens=8, temperature=0), bos_id=2, eos_id=-1
    )
    for source, row in zip(sources, got, strict=True):
        src = jnp.asarray([source])
        assert row == _naive_greedy(lambda t, src=src: S2S_FORWARD(src, t), [2], 8, eos_id=-1)


@pytest.mark.parametrize("family", ["gpt", "seq2seq"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_step_logits_equal_the_full_forward_pass(family, dtype):
    """Equal to float32 rounding; in bfloat16 (two rows: batched products over the cache) within
    bfloat16 rounding of the activations."""
    if dtype == "float32":
        cfg, params = (GPT, GPT_PARAMS) if family == "gpt" else (S2S, S2S_PARAMS)
    else:
        cfg, params = _model(family, ["model.dtype=bfloat16"])
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(4, 100, 9)), list(rng.integers(4, 100, 6))]
    tokens, segments = pad_rows(rows, 0, left=True)
    positions = np.maximum(np.cumsum(segments, 1) - 1, 0)
    context, model = None, build_model(cfg)
    if family == "gpt":
        full = model.apply({"params": params}, tokens, positions, segments)
    else:
        source, source_segments = pad_rows([[5, 6, 7, 8], [9, 10, 11]], 0, left=False)
        full = model.apply(
            {"params": params}, source, tokens, source_segments, segments, None, positions
        )
        context = encode(cfg, params, source, source_segments)
    step = jax.jit(step_fn(cfg))
    cache = init_cache(cfg, 2, 12)
    logits, cache = step(params, cache, tokens[:, :3], positions[:, :3], segments[:, :3], context)
    outputs = [logits]
    for t in range(3, tokens.shape[1]):  # prefill 3 tokens, then one token per step
        cols = slice(t, t + 1)
        logits, cache = step(
            params, cache, tokens[:, cols], positions[:, cols], segments[:, cols], context
        )
        outputs.append(logits)
    cached = np.asarray(jnp.concatenate(outputs, axis=1), np.float32)[..., : cfg.vocab_size]
    full = np.asarray(full, np.float32)[..., : cfg.vocab_size]
    real = segments.astype(bool)
    if dtype == "float32":
        np.testing.assert_allclose(cached[real], full[real], atol=1e-5)
    else:
        error = np.linalg.norm(cached[real] - full[real]) / np.linalg.norm(full[real])
        assert error < 2e-2


def _operand_shapes(jaxpr) -> list[tuple[int, ...]]:
    """The shapes of every operand in a jaxpr, nested jaxprs included."""
    shapes = [tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.invars]
    for eqn in jaxpr.eqns:
        for sub in jaxprs_in_params(eqn.params):
            shapes += _operand_shapes(sub)
    return shapes


def test_the_decoding_loop_reads_no_layer_out_of_a_stacked_array():
    """Each step reads per-layer weights and caches: a layer read out of an array stacked over
    the layers inside the loop would be copied at every step (on the CPU, 40% of GPT-2 small's
    decoding time). The layers are split once, before the loop."""
    cfg, params = _model("gpt", ["model.num_layers=3"])
    prompts = jnp.ones((1, 4), jnp.int32)
    jaxpr = jax.make_jaxpr(
        lambda params: sample_tokens(
            cfg,
            params,
            prompts,
            prompts,
            jax.random.key(0),
            sample=SampleConfig(max_new_tokens=4, temperature=0),
            max_new_tokens=4,
            eos_id=-1,
            pad_id=0,
        )
    )(params).jaxpr
    (loop,) = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "while"]
    stacked = [s for s in _operand_shapes(jaxpr) if len(s) > 1 and s[0] == 3]
    assert stacked  # the stacked parameters, split before the loop
    assert not [s for s in _operand_shapes(loop.params["body_jaxpr"].jaxpr) if s in stacked]


def test_split_layers_are_the_stacks_slices_from_one_program_for_all_layers():
    """`generate` splits the layers before its compiled loop (so the loop's program compiles
    without the split): one small program, its layer index an argument, serves every layer."""
    _, params = _model("gpt", ["model.num_layers=5"])
    programs = _layer._cache_size()
    split = unstack_layers(params)
    assert _layer._cache_size() == programs + 1
    stacked = params["decoder"]["layers"]
    for i in range(5):
        chex.assert_trees_all_equal(
            split["decoder"][f"layers_{i}"], jax.tree.map(lambda p, i=i: np.asarray(p)[i], stacked)
        )
    assert "layers" not in split["decoder"] and "layers_5" not in split["decoder"]
    assert unstack_layers(split) is split
    chex.assert_trees_all_equal(split["token_embed"], params["token_embed"])


def test_each_entry_point_names_the_family_it_needs():
    bert, bert_params = _model("bert")
    sample = SampleConfig(max_new_tokens=2)
    calls = {
        "generate needs a gpt model, not bert": lambda: generate(
            bert, bert_params, [[1, 2]], sample, eos_id=2
        ),
        "generate needs a gpt model, not seq2seq": lambda: generate(
            S2S, S2S_PARAMS, [[1, 2]], sample, eos_id=2
        ),
        "translate needs a seq2seq model, not gpt": lambda: translate(
            GPT, GPT_PARAMS, [[1, 2]], sample, bos_id=1, eos_id=2
        ),
    }
    for message, call in calls.items():
        with pytest.raises(JaxlmError, match=message):
            call()


def test_sampling_is_reproducible_with_the_same_key():
    prompts = [[2, 7, 9]]
    sample = SampleConfig(max_new_tokens=12, temperature=1.0, seed=5)
    first = generate(GPT, GPT_PARAMS, prompts, sample, eos_id=-1)
    assert first == generate(GPT, GPT_PARAMS, prompts, sample, eos_id=-1)
    other = SampleConfig(max_new_tokens=12, temperature=1.0, seed=6)
    assert generate(GPT, GPT_PARAMS, prompts, other, eos_id=-1) != first


def test_streaming_reports_every_token_in_order():
    seen = []
    sample = SampleConfig(max_new_tokens=6, temperature=0)
    got = generate(
        GPT, GPT_PARAMS, [[2, 7]], sample, eos_id=-1, stream=lambda i, t: seen.append(int(t[0]))
    )
    assert seen == got[0]


def _with_soft_prompt(cfg, params):
    """A prompt-tuned GPT: three soft-prompt vectors before every sequence."""
    prompt = jax.random.normal(jax.random.key(4), (3, cfg.embed_dim))
    return cfg, {**params, "prompt": prompt}


@pytest.mark.parametrize(
    "model",
    [
        lambda: (GPT, GPT_PARAMS),
        lambda: _model("gpt", ["model.sliding_window=5"]),
        lambda: _with_soft_prompt(*_model("gpt", ["model.position_embedding=rotary"])),
        lambda: _with_soft_prompt(*_model("gpt", ["model.position_embedding=alibi"])),
    ],
    ids=["gpt", "sliding-window", "soft-prompt", "alibi-soft-prompt"],
)
def test_a_conversations_replies_equal_greedy_decoding_over_the_whole_conversation(model):
    """Each reply runs only what the cache lacks: after the previous turn and its reply, after
    the part an edited conversation keeps, or from earlier where the chunk would pass max_len
    (32), the cache growing as the conversation does; every reply is still what full passes
    over the whole conversation give."""
    cfg, params = model()
    forward = jax.jit(lambda t: build_model(cfg).apply({"params": params}, t))
    chat = ConversationCache(cfg, params)

    def turn(prompt: list[int], reused: int) -> list[int]:
        reply = chat.reply(prompt, SampleConfig(max_new_tokens=4, temperature=0), eos_id=-1)
        assert reply == _naive_greedy(forward, prompt, min(4, 32 - len(prompt)), eos_id=-1)
        assert chat.reused == reused
        return reply

    first = [2, 7, 9]
    second = first + turn(first, 0) + [5, 6]
    assert chat.capacity == 16  # slots as a power of two of the tokens, grown as they grow
    third = second + turn(second, 7) + [8]
    turn(third, 13)
    edited = third[:4] + [40, 41]
    longer = edited + turn(edited, 4) + [12] * 16
    end = longer + turn(longer, 10) + [13]  # 31 tokens: a chunk of 16 fits from slot 16 on
    assert len(turn(end, 16)) == 1 and chat.capacity == 32


def test_a_conversations_sampling_equals_generate_with_the_same_seed():
    """Temperature, top-k and the repetition penalty (over the whole conversation) sample what
    `generate` samples from a fresh cache, streamed token by token; the cache then holds every
    sampled token."""
    sample = SampleConfig(max_new_tokens=5, temperature=1.0, top_k=20, repetition_penalty=1.5)
    chat = ConversationCache(GPT, GPT_PARAMS)
    prompt = [2, 7, 9, 9]
    for turn in range(3):
        sample = dataclasses.replace(sample, seed=turn)
        streamed = []
        reply = chat.reply(
            prompt, sample, eos_id=-1, stream=lambda i, t, out=streamed: out.append(int(t[0]))
        )
        assert reply == generate(GPT, GPT_PARAMS, [prompt], sample, eos_id=-1)[0] == streamed
        assert chat.tokens == prompt + reply
        prompt = prompt + reply + [3]


def test_a_conversation_whose_reply_fails_midway_starts_its_cache_over():
    """The failed reply's programs took the cache; the next reply runs the whole conversation."""
    chat = ConversationCache(GPT, GPT_PARAMS)
    greedy = SampleConfig(max_new_tokens=4, temperature=0)

    def interrupt(step, tokens):
        if step == 2:
            raise RuntimeError("stopped by the user")

    with pytest.raises(Exception, match="stopped by the user"):
        chat.reply([2, 7, 9], greedy, eos_id=-1, stream=interrupt)
    prompt = [2, 7, 9, 5, 6]
    assert chat.reply(prompt, greedy, eos_id=-1) == _naive_greedy(GPT_FORWARD, prompt, 4, -1)
    assert chat.reused == 0


def test_a_conversations_cache_names_what_it_cannot_do():
    chat = ConversationCache(GPT, GPT_PARAMS)
    with pytest.raises(JaxlmError, match="no beam search"):
        chat.reply([2, 7], SampleConfig(num_beams=2), eos_id=-1)
    with pytest.raises(JaxlmError, match="a prompt of 32 tokens leaves no room in max_len=32"):
        chat.reply([2] * 32, SampleConfig(), eos_id=-1)
    with pytest.raises(JaxlmError, match="needs a gpt model, not seq2seq"):
        ConversationCache(S2S, S2S_PARAMS)


def test_beam_size_one_equals_greedy():
    prompts = [[2, 7, 9], [2, 30]]
    greedy = generate(
        GPT, GPT_PARAMS, prompts, SampleConfig(max_new_tokens=8, temperature=0), eos_id=-1
    )
    tokens, segments = pad_rows(prompts, 0, left=True)
    beam = SampleConfig(num_beams=1, early_stopping=False)
    best, _ = beam_search(
        GPT, GPT_PARAMS, tokens, segments, sample=beam, max_new_tokens=8, eos_id=-1, pad_id=0
    )
    assert np.asarray(best[:, 0]).tolist() == greedy


def test_beam_search_equals_exhaustive_search():
    """With 4 real tokens and 3 steps there are 64 continuations; 16 beams keep every prefix,
    so beam search must return the most likely continuation."""
    cfg, params = _model("gpt", ["model.vocab_size=4", "model.vocab_multiple=4"])
    forward = jax.jit(lambda t: build_model(cfg).apply({"params": params}, t))
    prompt = [1, 3, 0]
    best, best_logp = None, -np.inf
    for tail in itertools.product(range(4), repeat=3):
        logp = np.asarray(jax.nn.log_softmax(forward(jnp.asarray([prompt + list(tail)]))[0], -1))
        total = sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(tail))
        if total > best_logp:
            best, best_logp = list(tail), total
    sample = SampleConfig(max_new_tokens=3, num_beams=16, length_penalty=0.0, early_stopping=False)
    assert generate(cfg, params, [prompt], sample, eos_id=-1) == [best]


def test_seq2seq_beam_search_runs_per_example_and_beats_greedy_likelihood():
    sources = [[5, 6, 7, 8, 9], [10, 11]]
    greedy = SampleConfig(max_new_tokens=6, temperature=0)
    beam = SampleConfig(max_new_tokens=6, num_beams=4, length_penalty=0.0, early_stopping=False)
    for source in sources:
        got_greedy = translate(S2S, S2S_PARAMS, [source], greedy, bos_id=2, eos_id=-1)[0]
        got_beam = translate(S2S, S2S_PARAMS, [source], beam, bos_id=2, eos_id=-1)[0]
        src = jnp.asarray([source])

        def logp(target, src=src):
            logits = S2S_FORWARD(src, jnp.asarray([[2, *target[:-1]]]))[0]
            scores = np.asarray(jax.nn.log_softmax(logits, -1))
            return sum(scores[i, t] for i, t in enumerate(target))

        assert logp(got_beam) >= logp(got_greedy) - 1e-4
    batched = translate(S2S, S2S_PARAMS, sources, beam, bos_id=2, eos_id=-1)
    assert batched == [
        translate(S2S, S2S_PARAMS, [s], beam, bos_id=2, eos_id=-1)[0] for s in sources
    ]
