"""Generation for the GPT and encoder-decoder families: sampling, greedy or beam search.

    new_ids = generate(cfg.model, params, [[bos, *ids]], cfg.sample, eos_id=eos)
    texts = generate_text(cfg.model, params, tokenizer, ["ROMEO."], cfg.sample)
    replies = generate_text(cfg.model, params, tokenizer, [[{"role": "user", "content": "Hi"}]],
                            cfg.sample)   # an instruct model's chat template frames the turn

Prompts of different lengths are left-padded; the loop runs on the device with a key/value cache
(see `jaxlm.decoding`) and is compiled once per model, settings and shape.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxlm.config import ModelConfig, SampleConfig, validate_sample
from jaxlm.data.chat_template import Message, render_chat
from jaxlm.data.tokenizer import document_start
from jaxlm.decoding.beam import beam_search
from jaxlm.decoding.cache import encode, unstack_layers
from jaxlm.decoding.loop import sample_tokens
from jaxlm.errors import ConfigError, DataError, JaxlmError

BUCKET_STEP = 16


def bucket_length(length: int, limit: int) -> int:
    """The width that inputs of `length` tokens are padded to, so that a few compiled programs
    serve inputs of every length: `length` rounded up to a multiple of 16 and of an eighth of
    the next power of two (16, 32, 48, ..., 128, 160, ..., 256, 320, ...: beyond 64 tokens, at
    most a quarter more), at most `limit` (but never below `length`)."""
    step = max(BUCKET_STEP, 1 << max((length - 1).bit_length() - 3, 0))
    return max(length, min(-(-length // step) * step, limit))


def pad_rows(
    sequences: list[list[int]], pad_id: int, left: bool, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, segments) [batch, width or the longest], segments 1 on real tokens. Prompts are
    left-padded (every row's last token is in the last column); encoder sources are
    right-padded."""
    if not sequences or min(len(s) for s in sequences) == 0:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    longest = max(len(s) for s in sequences)
    if width is not None and longest > width:
        raise JaxlmError(f"a sequence of {longest} tokens does not fit in {width}")
    width = width or longest
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    segments = np.zeros((len(sequences), width), np.int32)
    for row, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        tokens[row, cols], segments[row, cols] = seq, 1
    return tokens, segments


@functools.lru_cache(maxsize=32)
def _compiled(cfg: ModelConfig, sample: SampleConfig, max_new_tokens, eos_id, pad_id, stream):
    """The jitted decoding function for one model and one set of decoding settings."""
    settings = dict(sample=sample, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)

    def run(params, tokens, segments, rng, source, source_segments):
        context = None
        if cfg.family == "seq2seq":
            context = encode(cfg, params, source, source_segments)
        if sample.num_beams > 1:
            return beam_search(cfg, params, tokens, segments, context=context, **settings)[0][:, 0]
        return sample_tokens(
            cfg, params, tokens, segments, rng, context=context, stream=stream, **settings
        )

    return jax.jit(run)


def _require_family(cfg: ModelConfig, family: str, function: str) -> None:
    if cfg.family != family:
        raise JaxlmError(
            f"{function} needs a {family} model, not {cfg.family} "
            "(generate: gpt, translate: seq2seq, generate_text: either)"
        )


def _decode(cfg, params, tokens, segments, sample, eos_id, pad_id, stream, source=None):
    """Run the compiled loop; rows are cut after their EOS (the first of `eos_id`'s ids)."""
    validate_sample(sample)
    longest = int(np.max(np.sum(segments, axis=1)))  # real tokens; the rest pad to a bucket
    max_new = min(sample.max_new_tokens, cfg.max_len - longest)
    if max_new <= 0:
        raise JaxlmError(f"prompts of {longest} tokens leave no room in max_len={cfg.max_len}")
    settings = dataclasses.replace(sample, prompts=[], seed=0)  # neither changes the program
    run = _compiled(cfg, settings, max_new, eos_id, pad_id, stream)
    source_tokens, source_segments = source if source is not None else (None, None)
    rng = jax.random.key(sample.seed)
    out = run(unstack_layers(params), tokens, segments, rng, source_tokens, source_segments)
    stops = set(np.atleast_1d(eos_id).tolist())
    return [_cut_after(row, stops) for row in on_host(out).tolist()]


def _cut_after(row: list[int], stops: set[int]) -> list[int]:
    """`row` up to its first token in `stops`, included."""
    end = next((i for i, token in enumerate(row) if token in stops), len(row) - 1)
    return row[: end + 1]


def stop_ids(tokenizer, sample: SampleConfig) -> tuple[int, ...]:
    """The tokenizer's EOS and the ids of `sample.stop_tokens`: the tokens that end a row."""
    ids = [tokenizer.eos_id]
    for token in sample.stop_tokens:
        token_id = tokenizer.token_id(token)
        if token_id is None:
            raise ConfigError(
                f"config key 'sample.stop_tokens': {token!r} is not a token of the tokenizer"
            )
        ids.append(token_id)
    return tuple(dict.fromkeys(ids))


def on_host(array: jax.Array) -> np.ndarray:
    """The whole of `array`, also where it spans other processes' devices (the parameters of a
    multi-process run are; every process then takes part and gets every row)."""
    if array.is_fully_addressable:
        return np.asarray(array)
    return multihost_utils.process_allgather(array, tiled=True)


def generate(
    cfg: ModelConfig,
    params: dict,
    prompts: list[list[int]],
    sample: SampleConfig,
    *,
    eos_id: int | tuple[int, ...],
    pad_id: int = 0,
    stream: Callable | None = None,
) -> list[list[int]]:
    """GPT: continue each prompt (token ids) by up to `sample.max_new_tokens` tokens, stopping a
    row at `eos_id` (or the first of several ids; included). Returns only the new tokens of each
    row. Prompts are left-padded to a `bucket_length`: prompts of other lengths in the same
    bucket reuse the compiled program."""
    _require_family(cfg, "gpt", "generate")
    width = bucket_length(max(map(len, prompts), default=1), cfg.max_len)
    tokens, segments = pad_rows(prompts, pad_id, left=True, width=width)
    return _decode(cfg, params, tokens, segments, sample, eos_id, pad_id, stream)


def translate(
    cfg: ModelConfig,
    params: dict,
    sources: list[list[int]],
    sample: SampleConfig,
    *,
    bos_id: int,
    eos_id: int | tuple[int, ...],
    pad_id: int = 0,
    source_len: int | None = None,
) -> list[list[int]]:
    """Encoder-decoder: target tokens for each source (token ids), starting from `bos_id`.
    Sources are padded to `source_len` tokens when given, else to the `bucket_length` of the
    longest; calls with as many sources padded alike reuse one compiled program."""
    _require_family(cfg, "seq2seq", "translate")
    width = source_len or bucket_length(max(map(len, sources), default=1), cfg.max_len)
    source_tokens, source_segments = pad_rows(sources, pad_id, left=False, width=width)
    tokens, segments = pad_rows([[bos_id]] * len(sources), pad_id, left=True)
    source = (jnp.asarray(source_tokens), jnp.asarray(source_segments))
    return _decode(cfg, params, tokens, segments, sample, eos_id, pad_id, None, source)


def generate_text(
    cfg: ModelConfig,
    params: dict,
    tokenizer,
    prompts: list[str | list[Message]],
    sample: SampleConfig,
    stream: Callable | None = None,
) -> list[str]:
    """Continue each text prompt (GPT) or translate it (encoder-decoder), each row ending at EOS
    or a `sample.stop_tokens` token; returns the generated text of each. A GPT's prompt may be
    a conversation instead, which the model answers (`encode_prompt`)."""
    if cfg.family not in ("gpt", "seq2seq"):
        raise JaxlmError(f"generation needs a gpt or seq2seq model, not {cfg.family}")
    if cfg.family == "seq2seq" and not all(isinstance(p, str) for p in prompts):
        raise JaxlmError("an encoder-decoder translates texts, not conversations")
    stops = stop_ids(tokenizer, sample)
    if cfg.family == "seq2seq":
        sources = [[*ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(prompts)]
        targets = translate(
            cfg,
            params,
            sources,
            sample,
            bos_id=tokenizer.bos_id,
            eos_id=stops,
            pad_id=tokenizer.pad_id,
        )
        return [tokenizer.decode(without_stop(ids, stops)) for ids in targets]
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    new = generate(
        cfg,
        params,
        encoded,
        sample,
        eos_id=stops,
        pad_id=tokenizer.pad_id,
        stream=stream,
    )
    return [
        continuation(tokenizer, p, without_stop(n, stops))
        for p, n in zip(encoded, new, strict=True)
    ]


def without_stop(ids: list[int], stops: tuple[int, ...]) -> list[int]:
    """A row's new tokens without the stop token that ends it, if one does."""
    return ids[:-1] if ids and ids[-1] in stops else ids


def encode_prompt(tokenizer, prompt: str | list[Message]) -> list[int]:
    """A GPT prompt's token ids: a text after the document start (BOS), or a conversation
    ([{"role": "user", "content": ...}, ...]) framed by the tokenizer's chat template, the
    assistant's turn opened; the template writes any BOS itself, as `transformers`'
    `apply_chat_template` has it."""
    if isinstance(prompt, str):
        return [*document_start(tokenizer), *tokenizer.encode(prompt)]
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise DataError(
            "the model's tokenizer has no chat template (a Hugging Face tokenizer's "
            "chat_template.jinja, or chat_template in its tokenizer_config.json)"
        )
    return tokenizer.encode(render_chat(template, prompt, tokenizer.special))


def continuation(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text that `new_ids` add after `prompt_ids`. Decoded together, so that a continuation
    starting with a word keeps the space before it (decoding it alone would drop that space)."""
    return tokenizer.decode([*prompt_ids, *new_ids])[len(tokenizer.decode(prompt_ids)) :]
