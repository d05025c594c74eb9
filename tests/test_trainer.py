"""End to end on real text: train, evaluate, plot, checkpoint, resume, generate, and bad input."""

import io
import json
import math
import shutil
import subprocess
import sys

import pytest

from jaxlm import cli
from jaxlm.checkpoint import has_checkpoints
from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.train.plot import loss_curves
from jaxlm.train.trainer import train

VOCAB = 512


def _overrides(files, workdir, steps):
    return [
        f"data.train_files=[{','.join(str(f) for f in files)}]",
        "data.eval_fraction=0.1",
        "data.seq_len=64",
        "data.batch_size=8",
        "model.num_layers=2",
        "model.embed_dim=64",
        "model.num_heads=4",
        "model.mlp_dim=128",
        f"model.vocab_size={VOCAB}",
        "model.max_len=128",
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=10",
        f"train.steps={steps}",
        "train.log_every=10",
        "train.eval_every=40",
        "train.eval_batches=4",
        "train.progress_bar=false",
        f"train.workdir={workdir}",
        "sample.prompts=[The]",
        "sample.max_new_tokens=8",
    ]


@pytest.fixture(scope="module")
def trained(real_text_files, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    overrides = _overrides(real_text_files, workdir, steps=80)
    return workdir, overrides, train(load_config(None, overrides))


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_on_real_text(trained):
    workdir, _, last = trained
    records = _records(workdir)
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    eval_losses = [r["loss"] for r in records if r["split"] == "eval"]
    # The untrained model (evaluated at step 0) guesses uniformly: ln(512) = 6.24 nats.
    assert eval_losses[0] == pytest.approx(math.log(VOCAB), abs=0.1)
    assert train_losses[-1] < train_losses[0] - 0.5
    assert eval_losses[-1] < eval_losses[0] - 1.5
    assert last["eval_perplexity"] == pytest.approx(math.exp(last["eval_loss"]))


def test_outputs_are_written(trained):
    workdir, _, _ = trained
    png = (workdir / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "80").is_dir()
    assert {r["split"] for r in _records(workdir)} == {"train", "eval"}


def test_the_python_api_takes_paths_as_strings(trained, tmp_path):
    """What a notebook types: workdirs and files as plain strings."""
    import jaxlm

    workdir, _, _ = trained
    records = jaxlm.read_metrics(str(workdir / "metrics.jsonl"))
    assert records == _records(workdir)
    png = jaxlm.plot_loss(records, str(tmp_path / "loss.png"))
    assert png == tmp_path / "loss.png" and png.read_bytes().startswith(b"\x89PNG")
    cfg, params, tokenizer = jaxlm.load_for_inference(str(workdir))
    assert cfg.model.vocab_size == VOCAB == tokenizer.vocab_size and "token_embed" in params


def test_loss_curves_draw_the_likelihood_not_a_regularised_loss():
    records = [
        {"split": "train", "step": 10, "loss": 5.5, "nll": 5.0},
        {"split": "train", "step": 20, "loss": 4.5, "nll": 4.0},
        {"split": "eval", "step": 20, "loss": 4.2},
        {"split": "eval", "step": 20, "bleu": 3.0},
    ]
    assert loss_curves(records) == {"train": ([10, 20], [5.0, 4.0]), "eval": ([20], [4.2])}


def test_generate_cli_is_deterministic_when_greedy(trained, capsys):
    workdir, _, _ = trained
    argv = [
        "generate",
        str(workdir),
        "--prompt",
        "The",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
    ]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("The") and len(first.rstrip("\n")) > len("The")


def test_training_resumes_from_the_latest_checkpoint(trained):
    workdir, overrides, _ = trained
    train(load_config(None, overrides + ["train.steps=90"]))
    steps = [r["step"] for r in _records(workdir) if r["split"] == "train"]
    assert steps[-2:] == [80, 90]  # continued from 80; no step was repeated
    assert (workdir / "checkpoints" / "90").is_dir()


def test_resuming_with_other_parameters_is_refused_and_other_settings_are_not(trained, tmp_path):
    source, overrides, _ = trained
    workdir = tmp_path / "copy"
    shutil.copytree(source, workdir)
    overrides = [*overrides, f"train.workdir={workdir}"]
    saved = (workdir / "config.yaml").read_text()
    for change, named in (
        (["model.num_layers=3"], "model.num_layers 2 -> 3"),
        (["finetune.mode=partial", "finetune.trainable=[decoder/*]"], "finetune.mode 'full'"),
        (["optim.optimizer=adafactor"], "optim.optimizer 'adamw' -> 'adafactor'"),
        (["optim.grad_clip=0"], "optim.grad_clip 1.0 -> 0.0"),  # no clipping state then
    ):
        with pytest.raises(ConfigError) as error:
            train(load_config(None, [*overrides, *change]))
        assert named in str(error.value) and "\n" not in str(error.value)
        assert (workdir / "config.yaml").read_text() == saved  # still the checkpoints' config
    latest = max(int(step.name) for step in (workdir / "checkpoints").iterdir())
    logged = len(_records(workdir))
    resumed = [*overrides, "model.remat_policy=full", "optim.learning_rate=1e-3"]
    resumed += ["optim.grad_clip=0.5", "optim.schedule=rsqrt"]
    train(load_config(None, [*resumed, f"train.steps={latest + 5}"]))
    new = [r["step"] for r in _records(workdir)[logged:] if r["split"] == "train"]
    assert new == [latest + 5]  # resumed from the latest checkpoint


def test_keeping_the_best_by_a_metric_the_run_lacks_fails_before_training(
    real_text_files, tmp_path
):
    """A misspelt `train.best_metric` would keep no best checkpoint at all; the first
    evaluation (step 0) names it and the metrics there are, before any training step."""
    overrides = [
        *_overrides(real_text_files, tmp_path, steps=5),
        "train.keep_best=1",
        "train.best_metric=eval_acuracy",
    ]
    reported = "it reports eval_loss, eval_perplexity, eval_token_accuracy, eval_tokens"
    with pytest.raises(ConfigError, match=f"reports no 'eval_acuracy'; {reported}$"):
        train(load_config(None, overrides))
    assert not has_checkpoints(tmp_path / "checkpoints")


def _error_line(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_bad_input_is_one_line_error(capsys, tmp_path):
    assert "unknown config key 'model.foo'" in _error_line(
        capsys, ["describe", "gpt2-small", "model.foo=1"]
    )
    err = _error_line(capsys, ["describe", "gpt2-small", "model.num_layers=many"])
    assert "model.num_layers" in err
    missing = tmp_path / "nowhere" / "*.txt"
    err = _error_line(
        capsys,
        ["train", "gpt2-small", f"data.train_files=[{missing}]", f"train.workdir={tmp_path}"],
    )
    assert str(missing) in err
    assert "no config.yaml" in _error_line(capsys, ["generate", str(tmp_path), "--prompt", "x"])
    assert not (tmp_path / "config.yaml").exists()  # the failed run left no half-made workdir


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--max-new-tokens", "0", "--max-new-tokens: must be >= 1, not 0"),
        ("--temperature", "-1", "--temperature: must be >= 0, not -1.0"),
        ("--top-k", "-3", "--top-k: must be >= 0, not -3"),
        ("--top-p", "1.5", "--top-p: must be in (0, 1], not 1.5"),
        ("--repetition-penalty", "0", "--repetition-penalty: must be > 0, not 0.0"),
        ("--num-beams", "0", "--num-beams: must be >= 1, not 0"),
    ],
)
def test_generate_rejects_a_bad_setting_before_loading_anything(capsys, flag, value, message):
    """Checked before the workdir is read: the missing workdir is not what the error names."""
    err = _error_line(capsys, ["generate", "no-such-workdir", "--prompt", "x", flag, value])
    assert err == f"jaxlm: error: {message}"


def test_generate_errors_name_the_empty_prompt_file_and_the_prompt_too_long(
    trained, capsys, tmp_path
):
    workdir, _, _ = trained
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert "no prompts in" in _error_line(
        capsys, ["generate", str(workdir), "--prompt-file", str(empty)]
    )
    long_prompt = " ".join(["the"] * 400)
    for beams in ("1", "2"):  # streamed, batched
        argv = ["generate", str(workdir), "--prompt", long_prompt, "--num-beams", beams]
        assert cli.main(argv) == 2
        out, err = capsys.readouterr()
        assert "leave no room in max_len" in err and "\n" not in err.strip()
        assert out == ""  # not even the prompt


@pytest.mark.parametrize(
    "argv, minimum",
    [
        (["eval", "runs/x", "--batches", "-1"], 0),
        (["data", "show", "demo", "--examples", "-1"], 0),
        (
            ["tokenizer", "train", "--files", "a.txt", "--output", "t.model", "--vocab-size", "-1"],
            1,
        ),
        (["convert", "src", "dst", "--to", "hf", "--step", "-1"], 0),
    ],
)
def test_a_negative_count_is_refused_by_the_parser(capsys, argv, minimum):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    message = f"error: argument {argv[-2]}: must be >= {minimum}, not -1"
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)


def test_output_cut_short_by_its_reader_ends_quietly(trained):
    """`jaxlm ... | head -1`: no traceback when the pipe closes, the shell's SIGPIPE status."""
    workdir, _, _ = trained
    text = "".join(chr(0x4E00 + i) for i in range(20_000))  # unseen: one byte piece each
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxlm", "tokenizer", "encode", str(workdir / "tokenizer.model")]
        + [text],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout.readline().startswith(b"ids: ")
    process.stdout.close()  # the pieces line (about 400 KB) is still being written
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""


def test_data_show_prints_long_texts_by_their_two_ends(real_text_files, capsys):
    argv = ["data", "show", "demo", f"data.train_files=[{','.join(map(str, real_text_files))}]"]
    assert cli.main([*argv, "--examples", "3", "--chars", "200"]) == 0
    shortened = capsys.readouterr().out.splitlines()[1:]
    assert cli.main([*argv, "--examples", "3", "--chars", "0"]) == 0
    whole = capsys.readouterr().out.splitlines()[1:]
    assert len(shortened) == len(whole) == 3
    for short, full in zip(shortened, whole, strict=True):
        assert len(short) <= 210 < len(full) and "..." in short
        assert full.startswith(short[:90]) and full.endswith(short[-90:])


def test_overrides_may_follow_the_flags(capsys):
    outputs = []
    for argv in (
        ["demo", "model.num_layers=1", "--params"],
        ["demo", "--params", "model.num_layers=1"],
    ):
        assert cli.main(["describe", *argv]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "layers 1," in outputs[0]
    for argv in (["eval", "runs/x", "model.num_layers=1"], ["describe", "demo", "--bogus"]):
        with pytest.raises(SystemExit) as exit:  # eval takes no overrides
            cli.main(argv)
        assert exit.value.code == 2
        assert f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err


def test_generate_reads_the_prompt_from_standard_input_saying_so_on_a_terminal(
    trained, capsys, monkeypatch
):
    workdir, _, _ = trained
    argv = ["generate", str(workdir), "--temperature", "0", "--max-new-tokens", "4"]
    outputs = []
    for terminal in (False, True):
        stdin = io.StringIO("The")
        stdin.isatty = lambda terminal=terminal: terminal
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli.main(argv) == 0
        outputs.append(capsys.readouterr())
    assert outputs[0].out == outputs[1].out and outputs[0].out.startswith("The")
    assert outputs[0].err == ""
    assert "reading the prompt from standard input" in outputs[1].err


def test_describe_prints_published_parameter_counts(capsys):
    for preset, count in (("gpt2-small", 124_439_808), ("bert-base", 109_482_240)):
        assert cli.main(["describe", preset]) == 0
        assert f"parameters: {count}" in capsys.readouterr().out.splitlines()


def test_eval_cli_writes_metrics_of_the_held_out_split(trained, capsys):
    workdir, _, _ = trained
    assert cli.main(["eval", str(workdir), "--batches", "4"]) == 0
    metrics = json.loads((workdir / "eval.json").read_text())
    assert json.loads(capsys.readouterr().out) == metrics
    # The trainer's last evaluation saw the same 4 held-out batches with the same parameters.
    last_eval = [r for r in _records(workdir) if r["split"] == "eval"][-1]
    assert metrics["loss"] == pytest.approx(last_eval["loss"], rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))


def test_generate_cli_streams_a_single_prompt_and_runs_beam_search(trained, capsys):
    workdir, _, _ = trained
    argv = ["generate", str(workdir), "--prompt", "The", "--max-new-tokens", "6"]
    assert cli.main([*argv, "--temperature", "0"]) == 0
    streamed = capsys.readouterr().out
    assert cli.main([*argv, "--num-beams", "3"]) == 0
    assert capsys.readouterr().out.startswith("The")
    assert streamed.startswith("The") and streamed.endswith("\n")


def test_generate_cli_runs_repeated_prompts_as_one_batch(trained, capsys):
    """Each prompt of one call continues as it does alone (greedy, left-padded batch)."""
    workdir, _, _ = trained
    argv = ["generate", str(workdir), "--temperature", "0", "--max-new-tokens", "8"]
    alone = []
    for prompt in ("The", "It was a"):
        assert cli.main([*argv, "--prompt", prompt]) == 0
        alone.append(capsys.readouterr().out)
    assert cli.main([*argv, "--prompt", "The", "--prompt", "It was a"]) == 0
    assert capsys.readouterr().out == "".join(alone)


def test_continuation_text_keeps_the_space_before_its_first_word(trained):
    from jaxlm.data.tokenizer import Tokenizer
    from jaxlm.generate import continuation

    workdir, _, _ = trained
    tokenizer = Tokenizer.load(workdir / "tokenizer.model")
    prompt = [tokenizer.bos_id, *tokenizer.encode("The value of")]
    full = tokenizer.encode("The value of the object")
    new = full[len(prompt) - 1 :]
    assert full[: len(prompt) - 1] == prompt[1:]  # the prompt's tokens are a prefix
    assert tokenizer.decode(new) == "the object"  # alone, the leading space is lost
    assert continuation(tokenizer, prompt, new) == " the object"
