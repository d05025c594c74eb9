"""Fine-tuned workdirs of every mode load for inference (`load_for_inference`, `jaxlm generate`,
`jaxlm eval`) and compute what the fine-tuned model computed in training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from pydoc_data.topics import topics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lora_reference import unmerged_logits
from tiny import TINY_MODEL

from jaxlm import cli
from jaxlm.config import SampleConfig, load_config, to_yaml
from jaxlm.data.hf_tokenizer import load_tokenizer
from jaxlm.data.loader import TrainingData
from jaxlm.data.tokenizer import train_tokenizer_on_texts
from jaxlm.decoding.beam import beam_search
from jaxlm.finetune import lora
from jaxlm.generate import generate, generate_text, pad_rows
from jaxlm.inference import load_for_inference
from jaxlm.models import build_model, init_params
from jaxlm.train.trainer import Trainer

MODES = {  # (family, overrides)
    "prompt": ("gpt", ["finetune.prompt_length=3", "model.position_embedding=rotary"]),
    "prefix": ("gpt", ["finetune.prefix_length=3"]),
    "lora": ("gpt", ["finetune.lora_rank=2", "finetune.lora_targets=['*/query','*/value','*/wi']"]),
    "partial": ("gpt", ["finetune.trainable=['decoder/layers[1:]/mlp']"]),
    "bert-prompt": ("bert", ["finetune.prompt_length=3", "finetune.trainable=[classifier]"]),
}
GPT_MODES = [mode for mode, (family, _) in MODES.items() if family == "gpt"]
BERT = ["model.family=bert", "model.heads=[classifier]", "data.task=classification"]
TOKENS = np.random.default_rng(1).integers(4, 100, (2, 16)).astype(np.int32)


def _batches(family: str):
    """Random rows of 16 tokens for the task of `family` (a BERT label: the parity of token 1)."""
    rng = np.random.default_rng(0)
    while True:
        tokens = rng.integers(4, 100, (8, 16)).astype(np.int32)
        ones = np.ones((8, 16), np.int32)
        if family == "bert":
            yield {
                "inputs": tokens,
                "type_ids": np.zeros_like(tokens),
                "segment_ids": ones,
                "labels": tokens[:, 1] % 2,
                "label_weights": np.ones(8, np.float32),
            }
        else:
            targets = np.roll(tokens, -1, axis=1)
            weights = ones.astype(np.float32)
            yield {"inputs": tokens, "targets": targets, "weights": weights, "segment_ids": ones}


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    texts = [topics[name] for name in sorted(topics)[:10]]
    train_tokenizer_on_texts(texts, path, vocab_size=100, byte_fallback=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_model):
    """`runs(mode)`: (workdir, the trainer's config, its trained parameters as checkpointed)
    of a run of 2 steps, trained on first use."""
    done = {}

    def run(mode: str):
        if mode not in done:
            family, extra = MODES[mode]
            workdir = tmp_path_factory.mktemp(mode)
            cfg = load_config(
                None,
                [
                    *TINY_MODEL,
                    *(BERT if family == "bert" else []),
                    f"finetune.mode={mode.removeprefix('bert-')}",
                    *extra,
                    f"data.tokenizer={tokenizer_model}",
                    "data.batch_size=8",
                    "optim.learning_rate=1e-2",
                    "optim.warmup_steps=0",
                    "train.steps=2",
                    "train.eval_every=0",
                    "train.progress_bar=false",
                    f"train.workdir={workdir}",
                ],
            )
            labels = ["even", "odd"] if family == "bert" else []
            data = TrainingData(None, lambda start: _batches(family), lambda n: iter(()), labels)
            trainer = Trainer(cfg, data=data)
            trainer.fit()
            done[mode] = workdir, trainer.cfg, jax.device_get(trainer.state.params)
        return done[mode]

    return run


def _apply(cfg, params, tokens):
    """The model's logits (GPT) or class logits (BERT classifier) without a cache."""
    out = jax.jit(build_model(cfg.model).apply)({"params": params}, jnp.asarray(tokens))
    return out["class_logits"] if cfg.model.family == "bert" else out


def _reference(cfg, trained, tokens):
    """What the fine-tuned model computed in training: the trainer's model on the trained
    parameters (LoRA: each targeted projection adding its low-rank update, unmerged)."""
    if cfg.finetune.mode == "lora":
        return unmerged_logits(cfg.model, trained, jnp.asarray(tokens), lora.scaling(cfg.finetune))
    return _apply(cfg, trained, tokens)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_workdir_loads_the_model_that_trained(mode, runs):
    workdir, cfg, trained = runs(mode)
    loaded_cfg, params, _ = load_for_inference(workdir)
    assert loaded_cfg.finetune.mode == cfg.finetune.mode
    logits = _apply(loaded_cfg, params, TOKENS)
    if mode == "lora":
        assert "lora" not in params  # merged: the plain model runs
    np.testing.assert_allclose(logits, _reference(cfg, trained, TOKENS), rtol=1e-5, atol=1e-5)
    base = nn.unbox(init_params(cfg.model, jax.random.key(cfg.train.seed)))
    assert np.abs(np.asarray(logits - _apply(cfg, base, TOKENS))).max() > 1e-3


def _greedy(cfg, trained, prompt: list[int], steps: int, eos_id: int) -> list[int]:
    """Greedy continuation computed with the whole sequence through the model at every step."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(_reference(cfg, trained, [ids])[0, -1])))
        if ids[-1] == eos_id:
            break
    return ids[len(prompt) :]


def _log_likelihood(cfg, trained, prompt: list[int], new: list[int]) -> float:
    logp = jax.nn.log_softmax(_reference(cfg, trained, [prompt + new])[0])
    return sum(float(logp[len(prompt) + i - 1, token]) for i, token in enumerate(new))


@pytest.mark.parametrize("mode", GPT_MODES)
def test_decoding_with_the_cache_matches_the_model_on_whole_sequences(mode, runs):
    """Greedy decoding and beam search (left-padded prompts, the soft prompt or prefix in the
    cache) against the model run without a cache."""
    workdir, cfg, trained = runs(mode)
    loaded_cfg, params, tokenizer = load_for_inference(workdir)
    prompts = [[tokenizer.bos_id, *TOKENS[0, :5].tolist()], [tokenizer.bos_id, 17]]
    eos = tokenizer.eos_id
    greedy = SampleConfig(temperature=0.0, max_new_tokens=6)
    new = generate(loaded_cfg.model, params, prompts, greedy, eos_id=eos)
    assert new == [_greedy(cfg, trained, prompt, 6, eos) for prompt in prompts]

    tokens, segments = pad_rows(prompts, 0, left=True)
    beams = SampleConfig(num_beams=2, length_penalty=0.0, early_stopping=True)
    settings = dict(sample=beams, max_new_tokens=4, eos_id=-1, pad_id=0)
    best, scores = beam_search(loaded_cfg.model, params, tokens, segments, **settings)
    for prompt, hypotheses, score in zip(prompts, best.tolist(), scores, strict=True):
        expected = _log_likelihood(cfg, trained, prompt, hypotheses[0])
        assert float(score[0]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("mode", ["prompt", "lora"])
def test_generate_and_eval_cli_read_a_finetuned_workdir(mode, runs, capsys, tmp_path):
    workdir, _, _ = runs(mode)
    capsys.readouterr()  # the run's training log, when this test is the one that trains it
    argv = ["generate", str(workdir), "--prompt", "The", "--max-new-tokens", "5"]
    assert cli.main([*argv, "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The") and len(out.rstrip("\n")) > len("The")
    assert cli.main([*argv, "--num-beams", "2"]) == 0
    assert capsys.readouterr().out.startswith("The")

    text = tmp_path / "text.txt"
    text.write_text(topics["assert"] + topics["if"])
    output = tmp_path / "eval.json"
    argv = ["eval", str(workdir), "--files", str(text), "--batches", "1", "--output", str(output)]
    assert cli.main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0


def _error_line(capsys, argv) -> str:
    capsys.readouterr()  # what came before: a fixture's training log
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_a_workdir_that_cannot_do_what_is_asked_is_a_one_line_error(runs, capsys, tmp_path):
    lora_workdir, _, _ = runs("lora")
    workdir = tmp_path / "edited"
    shutil.copytree(lora_workdir, workdir)
    cfg = load_config(str(workdir / "config.yaml"), ["finetune.mode=prefix"])
    (workdir / "config.yaml").write_text(to_yaml(cfg))
    err = _error_line(capsys, ["generate", str(workdir), "--prompt", "The"])
    assert "does not hold the parameters of the model its config describes" in err
    assert "missing: decoder.layers.prefix_key" in err and "unexpected: lora." in err

    bert_workdir, _, _ = runs("bert-prompt")
    err = _error_line(capsys, ["generate", str(bert_workdir), "--prompt", "The"])
    assert err.endswith("generation needs a gpt or seq2seq model, not bert")
    (tmp_path / "text.txt").write_text(topics["assert"])
    err = _error_line(capsys, ["eval", str(bert_workdir), "--files", str(tmp_path / "text.txt")])
    assert (
        "--files evaluates runs on documents (causal_lm, masked_lm, span_corruption) or on" in err
    )


def test_a_prompt_tuned_gpt_samples_its_prompts_after_training(tokenizer_model, tmp_path, capsys):
    """`sample.prompts` at the end of a soft-prompt run decode through the prompt-filled cache:
    the same text as generating from the checkpointed workdir."""
    family, extra = MODES["prompt"]
    cfg = load_config(
        None,
        [
            *TINY_MODEL,
            "finetune.mode=prompt",
            *extra,
            f"data.tokenizer={tokenizer_model}",
            "data.batch_size=8",
            "train.steps=2",
            "train.eval_every=0",
            "train.progress_bar=false",
            f"train.workdir={tmp_path}",
            "sample.prompts=[The]",
            "sample.temperature=0",
            "sample.max_new_tokens=6",
        ],
    )
    tokenizer = load_tokenizer(str(tokenizer_model))
    data = TrainingData(tokenizer, lambda start: _batches(family), lambda n: iter(()))
    Trainer(cfg, data=data).fit()
    loaded_cfg, params, loaded_tokenizer = load_for_inference(tmp_path)
    sample = SampleConfig(max_new_tokens=6, temperature=0)
    (expected,) = generate_text(loaded_cfg.model, params, loaded_tokenizer, ["The"], sample)
    assert expected.strip()
    assert f"--- sample ---\nThe{expected}\n" in capsys.readouterr().out


def test_a_prefix_run_does_not_export_to_hugging_face(runs, capsys, tmp_path):
    workdir, _, _ = runs("prefix")
    err = _error_line(capsys, ["convert", str(workdir), str(tmp_path / "hf"), "--to", "hf"])
    assert "finetune.mode=prefix run, whose prefix has no counterpart in transformers" in err
    assert not (tmp_path / "hf").exists()
