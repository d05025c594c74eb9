"""BLEU and chrF of an encoder-decoder on (source, reference) text pairs, such as a run's held-out
split.

Sources are encoded and cut as training encodes them and translated greedily (or by beam
search) in batches of one shape, `data.batch_size` x `data.seq_len`, so one compiled decoding
program serves every batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from jaxlm.config import Config, SampleConfig
from jaxlm.data.tasks import seq2seq_sources, target_length
from jaxlm.errors import JaxlmError
from jaxlm.generate import translate
from jaxlm.metrics import corpus_bleu, corpus_chrf


def translate_sources(
    cfg: Config, params: dict, tokenizer, sources: Sequence[str], num_beams: int = 1
) -> list[str | None]:
    """The translation of each source text, or None for a source that training would skip
    (longer than `data.seq_len` - 1 tokens without `data.truncate`)."""
    encoded = seq2seq_sources(
        sources, tokenizer, seq_len=cfg.data.seq_len, truncate=cfg.data.truncate
    )
    kept = [i for i, ids in enumerate(encoded) if ids is not None]
    sample = SampleConfig(
        max_new_tokens=target_length(cfg.data),  # a training target: its tokens and EOS
        temperature=0.0,
        num_beams=num_beams,
        length_penalty=cfg.sample.length_penalty,
        early_stopping=cfg.sample.early_stopping,
    )
    rows = cfg.data.batch_size
    translations: list[str | None] = [None] * len(sources)
    starts = range(0, len(kept), rows)
    for start in tqdm(starts, desc="translating", unit="batch", leave=False, disable=None):
        batch = kept[start : start + rows]
        ids = [encoded[i] for i in batch]
        ids += [ids[0]] * (rows - len(ids))  # the last batch filled up to the same shape
        targets = translate(
            cfg.model,
            params,
            ids,
            sample,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            source_len=cfg.data.seq_len,
        )
        for i, target in zip(batch, targets, strict=False):
            translations[i] = tokenizer.decode(target)
    return translations


def translation_bleu(
    cfg: Config, params: dict, tokenizer, pairs: Sequence[tuple[str, str]], num_beams: int = 1
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """({"bleu": corpus BLEU, "chrf": corpus chrF (0-100, sacreBLEU's), "bleu_examples": pairs
    scored}, one record of source, reference and translation per scored pair). Pairs whose
    source training would skip are left out."""
    if not pairs:
        raise JaxlmError("BLEU needs held-out (source, reference) pairs; there are none")
    translations = translate_sources(cfg, params, tokenizer, [s for s, _ in pairs], num_beams)
    records = [
        {"source": source, "reference": reference, "translation": translation}
        for (source, reference), translation in zip(pairs, translations, strict=True)
        if translation is not None
    ]
    if not records:
        raise JaxlmError(
            f"none of the {len(pairs)} pairs fits data.seq_len={cfg.data.seq_len} "
            "(set data.truncate=true to cut them)"
        )
    hypotheses, references = ([r[key] for r in records] for key in ("translation", "reference"))
    scores = {
        "bleu": corpus_bleu(hypotheses, references),
        "chrf": corpus_chrf(hypotheses, references),
        "bleu_examples": len(records),
    }
    return scores, records
