"""End to end for the encoder tasks on real text: masked LM with next-sentence pairs,
classification and seq2seq train, evaluate, and resume exactly from a checkpoint."""

import json
import math

import numpy as np
import pytest

from jaxlm import cli
from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.train.trainer import Trainer, train

VOCAB = 512
SMALL_MODEL = [
    "model.num_layers=2",
    "model.embed_dim=64",
    "model.num_heads=4",
    "model.mlp_dim=128",
    f"model.vocab_size={VOCAB}",
    "model.max_len=64",
    "data.seq_len=48",
    "data.batch_size=16",
    "optim.learning_rate=2e-3",
    "optim.warmup_steps=5",
    "train.log_every=5",
    "train.eval_batches=0",
    "train.progress_bar=false",
]


def _records(workdir, split):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def code_or_prose(real_text_files, tmp_path_factory):
    """Lines of the Python docs (indentation kept) labelled `code` (indented) or `prose`."""
    examples = []
    for path in real_text_files:
        for line in path.read_text().splitlines():
            if len(line.strip()) > 20:
                label = "code" if line.startswith("   ") else "prose"
                examples.append({"text": line.rstrip(), "label": label})
    path = tmp_path_factory.mktemp("jsonl") / "lines.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in examples[::3]))
    return path


def test_classification_learns_and_reports_f1(code_or_prose, tmp_path):
    overrides = [
        *SMALL_MODEL,
        "model.family=bert",
        "model.heads=[classifier]",
        "data.source=jsonl",
        "data.task=classification",
        f"data.train_files=[{code_or_prose}]",
        "data.eval_fraction=0.1",
        "train.steps=60",
        "train.eval_every=60",
        f"train.workdir={tmp_path}",
    ]
    trainer = Trainer(load_config(None, overrides))
    last = trainer.fit()
    evals = _records(tmp_path, "eval")
    examples = [json.loads(line) for line in code_or_prose.read_text().splitlines()]
    labels = [example["label"] for example in examples]
    held_out = labels[9::10]  # every 10th example is held out
    # Classifying the held-out texts one by one agrees with the batched evaluation.
    predicted = trainer.classify([example["text"] for example in examples[9::10]])
    correct = sum(name == label for (name, _), label in zip(predicted, held_out, strict=True))
    assert correct / len(held_out) == pytest.approx(last["eval_accuracy"])
    assert all(0.5 <= probability <= 1 for _, probability in predicted)
    assert evals[-1]["examples"] == len(held_out)  # each held-out example counted once
    majority = max(held_out.count("code"), held_out.count("prose")) / len(held_out)
    assert last["eval_accuracy"] > majority + 0.05
    assert {"eval_macro_f1", "eval_f1_code", "eval_f1_prose"} <= set(last)
    with pytest.raises(ConfigError, match="num_classes"):
        train(load_config(None, [*overrides, "model.num_classes=3"]))


def test_masked_lm_with_next_sentence_learns(real_text_files, tmp_path):
    overrides = [
        *SMALL_MODEL,
        "model.family=bert",
        "model.heads=[mlm,nsp]",
        "data.task=masked_lm",
        f"data.train_files=[{','.join(map(str, real_text_files))}]",
        "data.eval_fraction=0.1",
        "train.steps=40",
        "train.eval_every=40",
        f"train.workdir={tmp_path}",
    ]
    train(load_config(None, overrides))
    evals = _records(tmp_path, "eval")
    assert evals[0]["loss"] == pytest.approx(math.log(VOCAB), abs=0.15)  # untrained: uniform
    assert evals[-1]["loss"] < evals[0]["loss"] - 1.0
    with pytest.raises(ConfigError, match=r"needs the heads \['nsp'\]"):
        train(load_config(None, [*overrides, "model.heads=[mlm]"]))


def _line_pairs(files, folder, target):
    """(JSONL file, pairs): lines of real text, each with `target(line)` as its target."""
    pairs = [
        {"text": line, "target": target(line)}
        for path in files[:20]
        for line in path.read_text().splitlines()
        if 3 < len(line.split()) < 12
    ]
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text("\n".join(map(json.dumps, pairs)))
    return jsonl, pairs


@pytest.fixture(scope="module")
def reversed_pairs(real_text_files, tmp_path_factory):
    """Lines of real text, each with its words reversed as the target."""
    reverse = lambda line: " ".join(reversed(line.split()))  # noqa: E731
    return _line_pairs(real_text_files, tmp_path_factory.mktemp("reversed"), reverse)


def _train_seq2seq(jsonl, workdir, steps, *extra):
    overrides = [
        *SMALL_MODEL,
        "model.family=seq2seq",
        "data.source=jsonl",
        "data.task=seq2seq",
        f"data.train_files=[{jsonl}]",
        "data.eval_fraction=0.1",
        "data.seq_len=24",
        "model.dropout_rate=0.1",
        f"train.steps={steps}",
        "train.eval_every=0",
        f"train.workdir={workdir}",
        *extra,
    ]
    return train(load_config(None, overrides))


def test_seq2seq_resumes_exactly_and_translates(reversed_pairs, tmp_path, capsys):
    """Pairs (line, its words reversed); a run stopped at step 6 and resumed to 12 ends where an
    uninterrupted 12-step run ends; `jaxlm generate` then translates with it."""
    jsonl, _ = reversed_pairs
    straight = _train_seq2seq(jsonl, tmp_path / "straight", 12)
    _train_seq2seq(jsonl, tmp_path / "resumed", 6)
    resumed = _train_seq2seq(jsonl, tmp_path / "resumed", 12)
    assert resumed["train_loss"] == straight["train_loss"]
    losses = {r["step"]: r["loss"] for r in _records(tmp_path / "straight", "train")}
    resumed_losses = {r["step"]: r["loss"] for r in _records(tmp_path / "resumed", "train")}
    assert resumed_losses.items() >= losses.items()  # plus step 6, where the first run ended
    assert np.isfinite(list(losses.values())).all() and losses[12] < losses[5]
    argv = ["generate", str(tmp_path / "resumed"), "--temperature", "0", "--max-new-tokens", "6"]
    capsys.readouterr()
    assert cli.main([*argv, "--prompt", "the value is returned"]) == 0
    assert capsys.readouterr().out.startswith("the value is returned -> ")


def test_eval_scores_held_out_translations_with_bleu(real_text_files, tmp_path, capsys):
    """Training with `train.eval_bleu` reports BLEU and chrF at every evaluation and keeps the
    best checkpoint by a higher-is-better metric. `jaxlm eval` then scores the held-out
    sources, each translated as `translate` translates it alone (unpadded, greedy, cut as in
    training), with sacreBLEU. The task is copying; after 400 steps the model copies some words
    of the held-out sources (BLEU above 1) and translates many sources differently, so a padding
    or batching mistake would change some translation."""
    import sacrebleu

    from jaxlm.config import SampleConfig
    from jaxlm.generate import translate
    from jaxlm.inference import load_for_inference

    jsonl, pairs = _line_pairs(real_text_files, tmp_path, lambda line: line)  # copying
    workdir = tmp_path / "run"
    _train_seq2seq(
        jsonl,
        workdir,
        400,
        "data.seq_len=32",
        "optim.learning_rate=3e-3",
        "train.log_every=200",
        "train.eval_every=200",
        "train.eval_batches=2",
        "train.eval_bleu=true",
        "train.keep_checkpoints=1",
        "train.keep_best=1",
        "train.best_metric=eval_token_accuracy",
        "train.best_mode=max",
    )
    evaluations = {r["step"]: r for r in _records(workdir, "eval")}
    assert sorted(evaluations) == [0, 200, 400]
    assert {record["bleu_examples"] for record in evaluations.values()} == {2 * 16}
    bleu_at = {step: record["bleu"] for step, record in evaluations.items()}
    assert bleu_at[400] > 1
    best = max((200, 400), key=lambda step: evaluations[step]["token_accuracy"])
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == sorted({best, 400})
    out = tmp_path / "eval" / "translations.jsonl"
    capsys.readouterr()
    assert cli.main(["eval", str(workdir), "--batches", "2", "--translations", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["bleu_examples"] == 2 * 16  # the first two held-out batches' pairs
    assert metrics["bleu"] == bleu_at[400]  # as training's last evaluation scored them
    assert json.loads((workdir / "eval.json").read_text()) == metrics
    held_out = tmp_path / "held-out.jsonl"  # the same pairs, from a file
    held_out.write_text("".join(json.dumps(pair) + "\n" for pair in pairs[9::10]))
    argv = ["eval", str(workdir), "--batches", "2", "--files", str(held_out)]
    assert cli.main([*argv, "--output", str(tmp_path / "files.json")]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    records = [json.loads(line) for line in out.read_text().splitlines()]
    targets = {pair["text"]: pair["target"] for pair in pairs}
    assert all(targets[r["source"]] == r["reference"] for r in records)
    hypotheses = [r["translation"] for r in records]
    references = [r["reference"] for r in records]
    assert len(set(hypotheses)) > len(hypotheses) // 4
    assert metrics["bleu"] == sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert metrics["chrf"] == evaluations[400]["chrf"] > metrics["bleu"]
    cfg, params, tokenizer = load_for_inference(workdir)
    greedy = SampleConfig(max_new_tokens=cfg.data.seq_len, temperature=0.0)
    cut = 0
    for record in records[::3]:  # padded in a full batch = translated alone, cut as in training
        ids = tokenizer.encode(record["source"])
        cut += len(ids) > cfg.data.seq_len - 1
        source = [*ids[: cfg.data.seq_len - 1], tokenizer.eos_id]
        (alone,) = translate(
            cfg.model, params, [source], greedy, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id
        )
        assert tokenizer.decode(alone) == record["translation"]
    assert 0 < cut < len(records[::3])
    assert cli.main(["eval", str(workdir), "--batches", "1", "--no-bleu"]) == 0
    assert not {"bleu", "chrf"} & set(json.loads(capsys.readouterr().out))


def test_span_corruption_pretrains_an_encoder_decoder(real_text_files, tmp_path, capsys):
    """T5's objective on real text: the trained tokenizer holds the sentinels, rows resume at
    any batch, the loss falls from uniform, and the model learns that a target begins with the
    first sentinel, which `jaxlm generate` then writes for a prompt with a gap."""
    from jaxlm.data.loader import training_data
    from jaxlm.data.tasks import target_length

    overrides = [
        *SMALL_MODEL,
        "model.family=seq2seq",
        "model.vocab_size=1024",
        "data.task=span_corruption",
        f"data.train_files=[{','.join(map(str, real_text_files))}]",
        "data.eval_fraction=0.1",
        "train.steps=80",
        "train.eval_every=80",
        "train.eval_batches=4",
        f"train.workdir={tmp_path}",
        "sample.prompts=[The <extra_id_0> of a list]",
        "sample.temperature=0",
        "sample.max_new_tokens=4",
    ]
    cfg = load_config(None, overrides)
    data = training_data(cfg, tmp_path, log=lambda line: None)
    assert data.tokenizer.token_id("<extra_id_99>") is not None
    target = target_length(cfg.data)
    batches = data.train_batches(0)
    first, second = next(batches), next(batches)
    assert first["source"].shape == (16, 48) and first["targets"].shape == (16, target)
    resumed = next(data.train_batches(1))
    assert all(np.array_equal(resumed[key], second[key]) for key in second)

    last = train(cfg)
    evals = _records(tmp_path, "eval")
    assert evals[0]["loss"] == pytest.approx(math.log(1024), abs=0.15)  # untrained: uniform
    assert last["eval_loss"] < evals[0]["loss"] - 2.0
    assert "--- sample ---\nThe <extra_id_0> of a list -> <extra_id_0>" in capsys.readouterr().out
    argv = ["generate", str(tmp_path), "--temperature", "0", "--max-new-tokens", "3"]
    assert cli.main([*argv, "--prompt", "Return <extra_id_0> value."]) == 0
    assert capsys.readouterr().out.startswith("Return <extra_id_0> value. -> <extra_id_0>")
    # The held-out documents (every 10th) given as files make the rows of the held-out split.
    assert cli.main(["eval", str(tmp_path)]) == 0
    held_out = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", str(tmp_path), "--files", *map(str, real_text_files[9::10])]) == 0
    assert json.loads(capsys.readouterr().out) == held_out


def test_completion_trains_a_gpt_on_the_completions_alone(reversed_pairs, tmp_path):
    """A GPT fine-tuned on (line, its words reversed), pairs packed: the held-out loss is the
    mean NLL of the completions' tokens and EOS, computed here from the model's logits over each
    pair alone, and it falls as training goes on. (Packed and unpacked rows have the same loss:
    tests/test_tasks.py.)"""
    import jax

    from jaxlm.data.hf_tokenizer import load_tokenizer
    from jaxlm.models import build_model

    jsonl, pairs = reversed_pairs
    overrides = [
        *SMALL_MODEL,
        "data.source=jsonl",
        "data.task=completion",
        f"data.train_files=[{jsonl}]",
        "data.eval_fraction=0.1",
        "data.seq_len=40",
        "data.truncate=false",
        "data.pack_completions=true",
        "train.steps=30",
        "train.eval_every=30",
        f"train.workdir={tmp_path}",
    ]
    trainer = Trainer(load_config(None, overrides))
    last = trainer.fit()
    evals = _records(tmp_path, "eval")
    assert evals[-1]["loss"] < evals[0]["loss"]

    tokenizer = load_tokenizer(str(tmp_path / "tokenizer.model"))
    model, params = build_model(trainer.cfg.model), jax.device_get(trainer.state.params)
    total, count = 0.0, 0
    for pair in pairs[9::10]:  # every 10th pair is held out
        head = [tokenizer.bos_id, *tokenizer.encode(pair["text"])]
        tail = [*tokenizer.encode(pair["target"]), tokenizer.eos_id]
        if len(head) + len(tail) > 41:
            continue  # skipped: longer than a row
        tokens = np.array([head + tail])
        logits = np.asarray(model.apply({"params": params}, tokens[:, :-1]), np.float64)[0]
        logits = logits[:, : tokenizer.vocab_size]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        for j in range(len(head) - 1, tokens.shape[1] - 1):
            total -= log_probs[j, tokens[0, j + 1]]
            count += 1
    assert last["eval_tokens"] == count
    assert last["eval_loss"] == pytest.approx(total / count, rel=1e-4)
    held_out = tmp_path / "held-out.jsonl"  # the held-out pairs, from a file
    held_out.write_text("".join(json.dumps(pair) + "\n" for pair in pairs[9::10]))
    assert cli.main(["eval", str(tmp_path), "--files", str(held_out)]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["tokens"] == count
    assert metrics["loss"] == pytest.approx(last["eval_loss"], rel=1e-6)
