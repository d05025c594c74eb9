"""Multi-host training: two real processes on this machine, joined through a local coordinator
and gloo CPU collectives, train as one single-process run over the same devices would."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from jaxlm import distributed
from jaxlm.config import load_config, to_yaml
from jaxlm.data.documents import read_documents
from jaxlm.data.token_file import write_token_file
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.parallel import activate
from jaxlm.train.metrics_log import read_metrics
from jaxlm.train.trainer import Trainer, train
from jaxlm.translation_eval import translation_bleu

STEPS = 4
# Runs `jaxlm train` and prints what `train` returned in this process (only process 0 logs).
DRIVER = """
import json, sys
import jax
from jaxlm import cli
from jaxlm.train import trainer

results, train = {}, trainer.train
trainer.train = lambda cfg: results.update(train(cfg)) or results
code = cli.main(["train", *sys.argv[1:]])
info = {"code": code, "process": jax.process_index(), "processes": jax.process_count()}
print("RESULT " + json.dumps({**info, "devices": jax.device_count(), **results}))
"""


MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
# Evaluates a translation run's latest checkpoint; prints its metrics and BLEU's translations.
EVALUATE_DRIVER = """
import json, sys
from jaxlm import distributed
from jaxlm.config import load_config
from jaxlm.train import trainer

cfg = load_config(sys.argv[1], sys.argv[2:])
distributed.initialize(cfg)
records, bleu = [], trainer.translation_bleu
trainer.translation_bleu = lambda *args: (lambda out: records.extend(out[1]) or out)(bleu(*args))
metrics = trainer.Trainer(cfg).evaluate()
print("RESULT " + json.dumps({"metrics": metrics, "records": records}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    flags = f"--xla_force_host_platform_device_count={devices}"
    return {**env, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture(scope="module")
def config_file(real_text_files, tmp_path_factory):
    """A tiny GPT on a token file of real text, on a (2, 2, 2) mesh of 8 devices."""
    folder = tmp_path_factory.mktemp("distributed")
    tokenizer = train_tokenizer(real_text_files, folder / "tokenizer.model", 512)
    tokens = folder / "train.tokens"
    write_token_file(read_documents(real_text_files, "file"), tokenizer, tokens)
    overrides = [
        "data.source=tokens",
        f"data.train_files=[{tokens}]",
        f"data.tokenizer={folder / 'tokenizer.model'}",
        "data.eval_fraction=0.1",
        "data.seq_len=32",
        "data.batch_size=8",
        "model.num_layers=2",
        "model.embed_dim=32",
        "model.num_heads=4",
        "model.mlp_dim=64",
        "model.vocab_size=512",
        "model.max_len=32",
        *MESH,
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=1",
        f"train.steps={STEPS}",
        "train.log_every=1",
        f"train.eval_every={STEPS}",
        "train.eval_batches=2",
        "train.progress_bar=false",
        "sample.prompts=[The]",
        "sample.max_new_tokens=4",
    ]
    path = folder / "tiny.yaml"
    path.write_text(to_yaml(load_config(None, overrides)))
    return path


def _losses(workdir, split="train"):
    return [r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r["split"] == split]


def _run_two_processes(
    driver: str, config_file, *overrides, own=([], [])
) -> tuple[list[dict], list[str]]:
    """(what each process printed after RESULT, each one's output) of `driver` run in two
    processes of 4 devices each, with `own[i]` the overrides of process i alone. Process 0 is
    configured by config keys, process 1 by the standard environment variables."""
    address = f"localhost:{_free_port()}"
    common = [str(config_file), *overrides, "distributed.enabled=true"]
    by_keys = [f"distributed.coordinator_address={address}", "distributed.num_processes=2"]
    launches = [
        (common + own[0] + by_keys + ["distributed.process_id=0"], _env(4)),
        (
            common + own[1],
            _env(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1"),
        ),
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", driver, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args, env in launches
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    results = []
    for output in outputs:
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        assert lines, output[-3000:]
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    return results, outputs


def test_two_processes_train_like_one(config_file, tmp_path):
    workdir = tmp_path / "two"
    results, outputs = _run_two_processes(DRIVER, config_file, f"train.workdir={workdir}")
    for index, result in enumerate(results):
        assert (result["code"], result["process"]) == (0, index), outputs[index][-3000:]
        assert (result["processes"], result["devices"]) == (2, 8)
    assert results[0]["train_loss"] == results[1]["train_loss"]
    assert results[0]["eval_loss"] == results[1]["eval_loss"]
    assert "--- sample ---" in outputs[0]
    assert not re.search(r"^(step +\d|--- sample)", outputs[1], re.M)  # only process 0 logs ...
    assert len(_losses(workdir)) == STEPS  # ... and writes metrics, once
    assert (workdir / "loss.png").exists() and (workdir / "checkpoints" / str(STEPS)).is_dir()

    # One process over the same 8 devices (this one's) sees the same global batches.
    reference = tmp_path / "one"
    last = train(load_config(str(config_file), [f"train.workdir={reference}"]))
    assert _losses(workdir) == pytest.approx(_losses(reference), rel=1e-5, abs=1e-5)
    assert _losses(workdir, "eval") == pytest.approx(_losses(reference, "eval"), rel=1e-5)
    assert results[1]["train_loss"] == pytest.approx(last["train_loss"], rel=1e-5, abs=1e-5)


def test_a_workdir_the_processes_do_not_share_is_a_one_line_error(config_file, tmp_path):
    """Each process of a multi-host run with a workdir on its own disk would keep its own part of
    every checkpoint; simulated with two folders, both processes stop before training with the
    same error, and leave the folders empty."""
    folders = [tmp_path / "host0", tmp_path / "host1"]
    own = tuple([f"train.workdir={folder}"] for folder in folders)
    results, outputs = _run_two_processes(DRIVER, config_file, own=own)
    errors = [[line for line in out.splitlines() if "error:" in line] for out in outputs]
    for result, lines, folder in zip(results, errors, folders, strict=True):
        assert result["code"] != 0 and len(lines) == 1, outputs
        assert "'train.workdir': process(es) 1 do not see the files" in lines[0]
        assert f"process 0 writes in {folder};" in lines[0]  # the path as each process has it
    assert [sorted(p.name for p in folder.iterdir()) for folder in folders] == [[], []]


def test_a_tokenizer_process_0_cannot_make_stops_every_process(config_file, tmp_path):
    """Process 0 alone trains a run's tokenizer. When it cannot (a vocabulary larger than the
    text supports), both processes stop with its one-line error, rather than one waiting for a
    tokenizer that never comes."""
    text = tmp_path / "short.txt"
    text.write_text("a few words of text\n" * 20)
    overrides = [
        "data.source=text",
        f"data.train_files=[{text}]",
        "data.document_unit=line",
        "data.tokenizer=''",
        "model.vocab_size=5000",
        f"train.workdir={tmp_path / 'run'}",
    ]
    results, outputs = _run_two_processes(DRIVER, config_file, *overrides)
    for result, output in zip(results, outputs, strict=True):
        lines = [line for line in output.splitlines() if "error:" in line]
        assert result["code"] != 0 and len(lines) == 1, output[-3000:]
        assert "tokenizer vocab_size 5000 is too large for its training text" in lines[0]
    assert not (tmp_path / "run" / "tokenizer.model").exists()


@pytest.fixture(scope="module")
def translation_run(real_text_files, tmp_path_factory):
    """(config file, workdir) of a small encoder-decoder trained for 300 steps, on the (2, 2, 2)
    mesh, to copy lines of real text: enough to copy some words, so translations differ."""
    folder = tmp_path_factory.mktemp("translation")
    lines = [
        line
        for path in real_text_files[:20]
        for line in path.read_text().splitlines()
        if 3 < len(line.split()) < 12
    ]
    pairs = folder / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"text": line, "target": line}) for line in lines))
    train_tokenizer(real_text_files, folder / "tokenizer.model", 512)
    overrides = [
        "model.family=seq2seq",
        "model.num_layers=2",
        "model.embed_dim=64",
        "model.num_heads=4",
        "model.mlp_dim=128",
        "model.vocab_size=512",
        "model.max_len=32",
        "data.source=jsonl",
        "data.task=seq2seq",
        f"data.train_files=[{pairs}]",
        f"data.tokenizer={folder / 'tokenizer.model'}",
        "data.eval_fraction=0.1",
        "data.seq_len=24",
        "data.batch_size=16",
        *MESH,
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=5",
        "train.steps=300",
        "train.log_every=100",
        "train.eval_every=0",
        "train.eval_batches=2",
        "train.eval_bleu=true",
        "train.eval_bleu_beams=2",
        "train.progress_bar=false",
        f"train.workdir={folder / 'run'}",
    ]
    config_file = folder / "translation.yaml"
    config_file.write_text(to_yaml(load_config(None, overrides)))
    train(load_config(str(config_file)))
    return config_file, folder / "run"


def test_two_processes_translate_for_bleu_as_one(translation_run):
    """Evaluating with `train.eval_bleu` in two processes (their parameters span both) gives
    each process every translation, the ones a single process over the same devices makes by
    beam search of `train.eval_bleu_beams` beams."""
    config_file, workdir = translation_run
    results, outputs = _run_two_processes(EVALUATE_DRIVER, config_file)
    assert results[0] == results[1], outputs[0][-3000:]
    metrics, records = results[0]["metrics"], results[0]["records"]
    translations = [r["translation"] for r in records]
    assert metrics["eval_bleu_examples"] == len(records) == 2 * 16
    assert len(set(translations)) > 8  # the model tells the sources apart

    trainer = Trainer(load_config(str(config_file)))
    pairs = trainer.data.eval_examples[: 2 * 16]
    with activate(trainer.mesh):
        scores, want = translation_bleu(
            trainer.cfg, trainer.params, trainer.data.tokenizer, pairs, 2
        )
    assert records == want
    assert metrics["eval_bleu"] == scores["bleu"]


def _initialize_in_subprocess(*overrides, timeout=60) -> str:
    """Output of a fresh process that calls `initialize` twice and reports the result."""
    code = (
        "import sys, jax\n"
        "from jaxlm import distributed\n"
        "from jaxlm.config import load_config\n"
        "cfg = load_config(None, sys.argv[1:])\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        distributed.initialize(cfg)\n"
        "        print('initialized', jax.process_count())\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__ + ': ' + str(e))\n"
    )
    args = [sys.executable, "-c", code, "distributed.enabled=true", *overrides]
    done = subprocess.run(args, env=_env(1), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_initialize_twice_is_harmless():
    address = f"localhost:{_free_port()}"
    out = _initialize_in_subprocess(
        f"distributed.coordinator_address={address}",
        "distributed.num_processes=1",
        "distributed.process_id=0",
    )
    assert out.splitlines() == ["initialized 1", "initialized 1"]


@pytest.mark.parametrize(
    "address, expected",
    [
        ("nosuchhost.invalid:1234", "unknown host 'nosuchhost.invalid'"),
        ("localhost:{free}", "no coordinator answered at localhost:\\d+ within 2s"),
    ],
    ids=["unknown-host", "no-coordinator"],
)
def test_unreachable_coordinator_is_a_one_line_error(address, expected):
    address = address.format(free=_free_port())
    out = _initialize_in_subprocess(
        f"distributed.coordinator_address={address}",
        "distributed.num_processes=2",
        "distributed.process_id=1",
        "distributed.timeout_seconds=2",
    )
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("JaxlmError: ") for line in lines), out
    assert re.search(expected, lines[0]), lines[0]


def test_busy_coordinator_port_is_a_one_line_error():
    with socket.create_server(("", 0)) as server:
        port = server.getsockname()[1]
        out = _initialize_in_subprocess(
            f"distributed.coordinator_address=localhost:{port}",
            "distributed.num_processes=2",
            "distributed.process_id=0",
        )
    assert out.startswith("JaxlmError: ") and f"cannot listen on port {port}" in out, out


def test_bad_distributed_config_is_a_config_error():
    with pytest.raises(ConfigError, match="distributed.coordinator_address"):
        distributed.initialize(
            load_config(None, ["distributed.enabled=true", "distributed.coordinator_address=h"])
        )
    with pytest.raises(ConfigError, match="distributed.process_id"):
        load_config(None, ["distributed.num_processes=2", "distributed.process_id=2"])
    assert issubclass(ConfigError, JaxlmError)


def test_initialize_after_jax_started_is_a_one_line_error():
    import jax

    jax.devices()  # this process's devices are in use
    config = load_config(
        None,
        [
            "distributed.enabled=true",
            f"distributed.coordinator_address=localhost:{_free_port()}",
            "distributed.num_processes=1",
            "distributed.process_id=0",
        ],
    )
    with pytest.raises(JaxlmError, match="must be called before any JAX calls") as error:
        distributed.initialize(config)
    assert "\n" not in str(error.value)
