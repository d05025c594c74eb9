"""A trained model from its workdir, for sampling and evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from jaxlm.checkpoint import Checkpointer
from jaxlm.config import Config, MeshConfig, load_config
from jaxlm.data.documents import read_documents, resolve_files
from jaxlm.data.hf_tokenizer import load_tokenizer, run_tokenizer
from jaxlm.data.loader import training_data
from jaxlm.data.sources.records import CONVERSATION_TASKS, PAIR_TASKS
from jaxlm.data.sources.splits import LM_TASKS, Splits, load_splits
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import JaxlmError
from jaxlm.finetune import checkpointed_params, model_params
from jaxlm.parallel import logical_shardings, make_mesh
from jaxlm.train.evaluation import compile_eval_step, evaluate
from jaxlm.translation_eval import translation_bleu


def load_for_inference(workdir: str | Path) -> tuple[Config, dict, Tokenizer]:
    """(config, parameters of the latest checkpoint, tokenizer) of a training workdir.

    Only the parameters are read, those of any `finetune.mode`: LoRA updates come merged into
    their kernels (the plain model runs at full speed); a soft prompt or prefix stays in the
    parameters, and the model applies it (in decoding too).
    """
    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise JaxlmError(f"{workdir} is not a training workdir (no config.yaml)")
    cfg = load_config(str(workdir / "config.yaml"))
    tokenizer = load_tokenizer(str(run_tokenizer(cfg.data.tokenizer, workdir)))
    boxed = checkpointed_params(cfg)
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        params = checkpointer.restore_params(
            nn.unbox(boxed), logical_shardings(boxed, make_mesh(MeshConfig()))
        )
    finally:
        checkpointer.close()
    return cfg, model_params(cfg, params), tokenizer


def evaluate_workdir(
    workdir: Path,
    files: list[str] | None = None,
    batches: int = 0,
    *,
    bleu: bool = True,
    num_beams: int = 1,
    translations: Path | None = None,
) -> dict:
    """Metrics of the latest checkpoint on the run's held-out split, or on `files` made into
    rows as the run makes its held-out examples (text files of documents for causal LM, masked
    LM and span corruption; JSONL pairs for seq2seq and completion, conversations for chat),
    over all of it or its first `batches` batches.

    For an encoder-decoder run with `bleu`, the held-out sources are also translated (greedily,
    or by beam search with `num_beams`) and scored against their references (`bleu`,
    `bleu_examples`); `translations`, when given, receives one JSON line per scored pair."""
    cfg, params, tokenizer = load_for_inference(workdir)
    mesh = make_mesh(MeshConfig())
    eval_step = compile_eval_step(cfg, jax.tree.map(lambda x: x.sharding, params), mesh)
    if files:
        splits = _held_out_files(cfg, files)
        data = training_data(cfg, workdir, log=lambda message: None, splits=splits)
    else:
        data = training_data(cfg, workdir, log=lambda message: None)
    metrics = evaluate(eval_step, params, data.eval_batches(batches), mesh, data.labels)
    if not metrics and cfg.data.eval_fraction == 0 and not files:
        raise JaxlmError("the run held out no data (data.eval_fraction=0): pass --files")
    if not metrics:
        shape = f"{cfg.data.batch_size} x {cfg.data.seq_len}"
        raise JaxlmError(f"the evaluation data holds less than one batch of {shape} tokens")
    if bleu and cfg.data.task == "seq2seq":
        pairs = data.eval_examples[: batches * cfg.data.batch_size or None]
        scores, records = translation_bleu(cfg, params, tokenizer, pairs, num_beams)
        metrics |= scores
        if translations is not None:
            translations.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            )
    return metrics


def _held_out_files(cfg: Config, files: list[str]) -> Splits:
    """`files` as held-out examples of the run's task: documents (causal or masked LM, span
    corruption), or the pairs of JSONL files with the run's `data.text_field` and
    `data.target_field` (seq2seq, completion) or their conversations (`data.messages_field`:
    chat)."""
    if cfg.data.task in LM_TASKS:
        return Splits(train=[], eval=read_documents(resolve_files(files), cfg.data.document_unit))
    if cfg.data.task not in (*PAIR_TASKS, *CONVERSATION_TASKS):
        raise JaxlmError(
            f"--files evaluates runs on documents ({', '.join(LM_TASKS)}) or on JSONL pairs "
            f"({', '.join(PAIR_TASKS)}) or conversations ({', '.join(CONVERSATION_TASKS)}); "
            f"this run is {cfg.data.task}"
        )
    every_pair = dict(source="jsonl", eval_fraction=0.0, eval_examples=0, max_examples=0)
    pairs = load_splits(dataclasses.replace(cfg.data, train_files=list(files), **every_pair))
    return Splits(train=[], eval=pairs.train)


def classify_texts(
    cfg: Config, params: dict, tokenizer, texts: list[str], labels: list[str]
) -> list[tuple[str, float]]:
    """(class name, probability) of each text under a classifier (bert family with the
    `classifier` head), encoded as in training: `[CLS] text [SEP]`, cut to `data.seq_len`."""
    from jaxlm.data.tasks import classification_rows
    from jaxlm.models import build_model

    if "classifier" not in cfg.model.heads:
        raise JaxlmError("classify needs a bert model with the 'classifier' head")
    rows = classification_rows(
        [(text, 0) for text in texts], tokenizer, seq_len=cfg.data.seq_len, truncate=True
    )
    batch = [rows.make_row(i, None) for i in range(rows.count)]
    inputs = {key: np.stack([row[key] for row in batch]) for key in batch[0]}
    model = build_model(cfg.model)
    logits = jax.jit(model.apply)(
        {"params": params}, inputs["inputs"], inputs["type_ids"], inputs["segment_ids"]
    )["class_logits"]
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    best = probabilities.argmax(axis=-1)
    return [(labels[i], float(p[i])) for i, p in zip(best, probabilities, strict=True)]
