"""A run's `sample` settings as the `generation_config.json` that `transformers`' `generate`
starts from, so that an exported GPT or encoder-decoder generates as `jaxlm generate` does:
greedy at temperature 0, else sampling with the run's temperature, top-k and top-p (0 and 1:
off), the repetition penalty, or beam search; up to `sample.max_new_tokens` new tokens; the
special token ids of the export's `config.json`. No end-of-sequence token is forced at the
length limit (jaxlm forces none; Marian's `config.json` asks for one). Beam search can part from
jaxlm's: of the 2 x num_beams candidates of a step, transformers finishes only those ranked in
the first num_beams that end, jaxlm (as T5X) every one that ends."""

from __future__ import annotations

import contextlib

from jaxlm.config import SampleConfig
from jaxlm.errors import DataError

GENERATION_CONFIG = "generation_config.json"
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def generation_config(sample: SampleConfig, hf_config: dict, stops: tuple[int, ...] = ()) -> dict:
    """The `generation_config.json` of `sample` for a model whose `config.json` is `hf_config`;
    `stops`, the ids of `sample.stop_tokens`, join its EOS."""
    settings = {key: hf_config[key] for key in TOKEN_KEYS if hf_config.get(key) is not None}
    if stops:
        eos = settings.get("eos_token_id")
        settings["eos_token_id"] = list(dict.fromkeys([*([] if eos is None else [eos]), *stops]))
    settings["max_new_tokens"] = sample.max_new_tokens
    if sample.num_beams > 1:
        settings |= {
            "do_sample": False,
            "num_beams": sample.num_beams,
            "length_penalty": sample.length_penalty,
            "early_stopping": sample.early_stopping,
        }
    elif sample.temperature == 0:
        settings["do_sample"] = False
    else:
        settings |= {
            "do_sample": True,
            "temperature": sample.temperature,
            "top_k": sample.top_k,
            "top_p": sample.top_p,
        }
    if sample.repetition_penalty != 1.0:
        settings["repetition_penalty"] = sample.repetition_penalty
    return settings


def stop_tokens(generation: dict, tokenizer) -> list[str]:
    """The tokens besides the tokenizer's EOS at which a `generation_config.json` ends a row
    (its list of `eos_token_id`s: an instruct model's end of turn)."""
    ids = generation.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
    eos = None
    with contextlib.suppress(DataError):  # a Hugging Face tokenizer may lack one
        eos = tokenizer.eos_id
    return [tokenizer.piece(int(i)) for i in ids if int(i) != eos]
