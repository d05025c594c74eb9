"""A conversation's key/value cache, kept from one reply to the next.

    chat = ConversationCache(cfg.model, params)
    new_ids = chat.reply(encode_prompt(tokenizer, messages), cfg.sample, eos_id=stops)

Each reply gets the whole conversation so far and runs through the model only its tokens after
the longest prefix that the cache already holds: the earlier turns and replies, where the chat
template renders them again as they were generated. The new tokens go in as one chunk padded to
a `bucket_length` (so that few programs compile), then sampling goes on as `jaxlm.generate` does
it. The logits are those of a fresh pass over the whole conversation. The cache has slots for a
power of two of tokens, up to `model.max_len`, and grows (kept) as the conversation does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig, SampleConfig, validate_sample
from jaxlm.decoding.cache import init_cache, soft_prompt_length, step_fn, unstack_layers
from jaxlm.decoding.loop import sample_after, seen_tokens
from jaxlm.errors import JaxlmError
from jaxlm.generate import bucket_length, generate, on_host

SMALLEST_CAPACITY = 16


class ConversationCache:
    """A GPT's cache for one growing sequence of up to `cfg.max_len` tokens (after a soft
    prompt's). Models with LongRoPE (`model.rope_scaling: longrope`) rotate the whole sequence
    by other factors once it outgrows `rope_original_max_len`, so they run each conversation
    from the start."""

    def __init__(self, cfg: ModelConfig, params):
        if cfg.family != "gpt":
            raise JaxlmError(f"a conversation's cache needs a gpt model, not {cfg.family}")
        self.cfg = cfg
        self.params = unstack_layers(params)
        self.offset = soft_prompt_length(self.params)  # the soft prompt's slots come first
        self.cache: dict | None = None  # made by the first reply
        self.tokens: list[int] = []  # the tokens whose keys and values fill the cache
        self.reused = 0  # the last reply's prompt tokens that were in the cache already
        self._stream: Callable | None = None
        self._samplers: dict = {}

    def reply(
        self,
        prompt: list[int],
        sample: SampleConfig,
        *,
        eos_id: int | tuple[int, ...],
        pad_id: int = 0,
        stream: Callable | None = None,
    ) -> list[int]:
        """The new tokens after `prompt` (token ids: the whole conversation, the assistant's turn
        opened), up to `sample.max_new_tokens` and the first of `eos_id`'s ids (included);
        `stream(step, tokens)` gets each one as it is sampled. Sampling only: no beam search."""
        validate_sample(sample)
        if sample.num_beams > 1:
            raise JaxlmError("a conversation's cache samples or decodes greedily: no beam search")
        room = min(sample.max_new_tokens, self.cfg.max_len - len(prompt))
        if not prompt or room <= 0:
            raise JaxlmError(
                f"a prompt of {len(prompt)} tokens leaves no room in max_len={self.cfg.max_len}"
            )
        if self.cfg.rope_scaling == "longrope":
            (new,) = generate(
                self.cfg, self.params, [prompt], sample, eos_id=eos_id, pad_id=pad_id, stream=stream
            )
            return new
        run = self._sampler(sample, eos_id, pad_id)
        self._stream = stream
        try:
            logits = self._extend(prompt, room, pad_id)
            ids = jnp.asarray([prompt])
            seen = seen_tokens(sample, logits.shape[-1], ids, jnp.ones_like(ids))
            out, self.cache = run(
                self.params,
                logits,
                self.cache,
                jnp.asarray([len(prompt)]),
                jax.random.key(sample.seed),
                seen,
                limit=room,
            )
            row = on_host(out)[0]  # waits for the loop, and so for its calls to `stream`
        except BaseException:  # an interrupted reply: its programs took the cache (donated)
            self.cache, self.tokens = None, []
            raise
        finally:
            self._stream = None
        fed = int(self.cache["index"]) - self.offset - len(prompt)  # every sampled token
        new = row[:fed].tolist()  # up to the first stop, which ends the loop
        self.tokens = [*prompt, *new]
        return new

    @property
    def capacity(self) -> int:
        """The tokens the cache has slots for (after a soft prompt's)."""
        return 0 if self.cache is None else self.cache["segments"].shape[1] - self.offset

    def _make_room(self, length: int) -> None:
        """A cache with slots for `length` tokens at least: made, or grown (its contents kept),
        to the next power of two (up to `max_len`), so that a long conversation compiles its
        programs again a few times only, and a short one holds no more than it needs."""
        if length <= self.capacity:
            return
        capacity = min(max(SMALLEST_CAPACITY, 1 << (length - 1).bit_length()), self.cfg.max_len)
        if self.cache is None:
            self.cache = init_cache(self.cfg, 1, self.offset + capacity)
            return
        extra = capacity - self.capacity
        slots = ((0, 0), (0, 0), (0, extra), (0, 0))  # [batch, kv_heads, length, head_dim]
        self.cache = {
            **self.cache,
            "key": tuple(jnp.pad(a, slots) for a in self.cache["key"]),
            "value": tuple(jnp.pad(a, slots) for a in self.cache["value"]),
            "segments": jnp.pad(self.cache["segments"], ((0, 0), (0, extra))),
        }

    def _extend(self, prompt: list[int], room: int, pad_id: int) -> jax.Array:
        """Run the prompt's tokens that the cache lacks into it, with `room` slots after them;
        the last one's logits [1, vocab]. They go in from the slot after the longest prefix it
        holds (at least one token goes in), or earlier, where their chunk would pass
        `max_len`."""
        kept = next(
            (i for i, (a, b) in enumerate(zip(self.tokens, prompt[:-1], strict=False)) if a != b),
            min(len(self.tokens), len(prompt) - 1),
        )
        chunk = bucket_length(len(prompt) - kept, self.cfg.max_len)
        self._make_room(min(max(len(prompt) + room, kept + chunk), self.cfg.max_len))
        start = min(kept, self.capacity - chunk)
        tokens = np.full((1, chunk), pad_id, np.int32)
        tokens[0, : len(prompt) - start] = prompt[start:]
        first = not self.tokens  # a new cache: the soft prompt goes in first
        logits, self.cache = _extender(self.cfg, first)(
            self.params, self.cache, tokens, start, len(prompt) - start
        )
        self.tokens, self.reused = list(prompt), start
        return logits

    def _sampler(self, sample: SampleConfig, eos_id, pad_id: int):
        """The compiled sampling loop for these settings (one per set, kept)."""
        settings = dataclasses.replace(sample, prompts=[], seed=0)  # neither changes the program
        key = (settings, eos_id, pad_id)
        if key not in self._samplers:
            run = functools.partial(
                sample_after,
                self.cfg,
                sample=settings,
                max_new_tokens=settings.max_new_tokens,
                eos_id=eos_id,
                pad_id=pad_id,
                stream=self._forward,
            )
            self._samplers[key] = jax.jit(run, donate_argnums=2)  # (params, logits, cache, ...)
        return self._samplers[key]

    def _forward(self, step, tokens) -> None:
        """The sampling loop's stream: to the current reply's `stream`, if any."""
        if self._stream is not None:
            self._stream(step, tokens)


@functools.lru_cache(maxsize=32)
def _extender(cfg: ModelConfig, first: bool):
    """The compiled step that writes a chunk [1, length] of `count` tokens (then padding) into a
    cache from its slot `start` (after a soft prompt, which the `first` step writes), and
    returns the logits of the chunk's last token and the cache, its next free slot after them."""
    step = step_fn(cfg)

    def extend(params, cache, tokens, start, count):
        offset = soft_prompt_length(params)
        slots = jnp.arange(tokens.shape[1])
        cache = {**cache, "index": jnp.asarray(0 if first else offset + start, jnp.int32)}
        segments = (slots < count).astype(jnp.int32)[None]
        logits, cache = step(params, cache, tokens, (start + slots)[None], segments, None, first)
        last = jax.lax.dynamic_index_in_dim(logits, count - 1, axis=1, keepdims=False)
        return last, {**cache, "index": (offset + start + count).astype(jnp.int32)}

    return jax.jit(extend, donate_argnums=1)
