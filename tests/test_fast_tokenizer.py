"""jaxlm's sentencepiece tokenizers as Hugging Face fast tokenizers: the same ids and text on real
documents, the framing of each model family in `transformers`, and exported runs that
`transformers` continues, classifies, translates and fills spans with as jaxlm does."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from jaxlm import cli
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import ConversionError
from jaxlm.interop.fast_tokenizer import fast_tokenizer, read_model, write_hf_tokenizer

pytest.importorskip("transformers")
SENTINELS = 10


def pydoc_documents() -> list[str]:
    """The Python documentation's topic pages: 79 real documents of prose, code and tables."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


# Texts where the two encoders could part: leading, trailing and repeated spaces, empty lines,
# user-defined pieces inside words and after spaces, characters outside the vocabulary.
EDGES = [
    "",
    " ",
    "\n",
    "\n\n \n",
    " leading space",
    "trailing space \n\n",
    "two  spaces\n  indented\n\nafter an empty line",
    "The [MASK] is [CLS]here[SEP] and x<extra_id_3>y <extra_id_0>",
    "[MASK] at the start\n[SEP] at a line's start",
    "é, 😀 and 中文 are not pieces",
]


@pytest.fixture(scope="module", params=[(m, f) for m in ("unigram", "bpe") for f in (True, False)])
def models(request, real_text_files, tmp_path_factory) -> Path:
    """A sentencepiece model as `jaxlm tokenizer train` makes it: unigram or BPE, with or without
    byte fallback, with [MASK], [CLS], [SEP] and sentinels."""
    model_type, byte_fallback = request.param
    path = tmp_path_factory.mktemp("sp") / f"{model_type}-{byte_fallback}.model"
    train_tokenizer(
        real_text_files,
        path,
        1000,
        model_type,
        sample_lines=20_000,
        byte_fallback=byte_fallback,
        sentinels=SENTINELS,
    )
    return path


def _score(sp: spm.SentencePieceProcessor, ids: list[int]) -> float:
    return sum(sp.get_score(i) for i in ids)


def test_fast_tokenizer_gives_jaxlms_ids_and_text_on_real_documents(models):
    jaxlm_tokenizer, hf = Tokenizer.load(models), fast_tokenizer(models)
    documents = pydoc_documents()
    texts = documents + [line for doc in documents for line in doc.split("\n")] + EDGES
    expected = jaxlm_tokenizer.encode_batch(texts)
    got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    unigram = read_model(models).trainer_spec.model_type == 1
    differing = [i for i in range(len(texts)) if expected[i] != got[i]]
    # Unigram segmentations of equal score (in runs of one character: "=" * 26 is 16 + 10 or
    # 10 + 16) are decided by float32 rounding in sentencepiece: the only differences allowed.
    assert not differing or (unigram and len(differing) < len(texts) / 100)
    for i in differing:
        assert _score(jaxlm_tokenizer.sp, got[i]) == pytest.approx(
            _score(jaxlm_tokenizer.sp, expected[i]), abs=1e-4
        )
        assert jaxlm_tokenizer.decode(got[i]) == jaxlm_tokenizer.decode(expected[i])
    for ids in expected:
        assert hf.decode(ids, skip_special_tokens=True) == jaxlm_tokenizer.decode(ids)
    assert sum(map(len, expected)) > 100_000


def test_a_text_that_is_only_a_user_defined_piece_loses_its_prefix(models):
    """The one documented difference: sentencepiece writes `▁ [MASK]` for the text "[MASK]"."""
    jaxlm_tokenizer, hf = Tokenizer.load(models), fast_tokenizer(models)
    mask = jaxlm_tokenizer.mask_id
    assert hf.encode("[MASK]", add_special_tokens=False).ids == [mask]
    assert jaxlm_tokenizer.encode("[MASK]")[-1] == mask
    assert len(jaxlm_tokenizer.encode("[MASK]")) == 2


SENTENCE = "Lists implement the common sequence operations."


@pytest.mark.parametrize("family", ["gpt", "bert", "seq2seq"])
def test_transformers_frames_inputs_as_the_family_does(family, models, tmp_path):
    from transformers import AutoTokenizer

    write_hf_tokenizer(models, tmp_path, family, max_len=64)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    tok = Tokenizer.load(models)
    ids, second = tok.encode(SENTENCE), tok.encode("A second one.")
    framed = {
        "gpt": ([tok.bos_id, *ids], [tok.bos_id, *ids, *second]),
        "bert": (
            [tok.cls_id, *ids, tok.sep_id],
            [tok.cls_id, *ids, tok.sep_id, *second, tok.sep_id],
        ),
        "seq2seq": ([*ids, tok.eos_id], [*ids, tok.eos_id, *second, tok.eos_id]),
    }[family]
    single, pair = hf(SENTENCE), hf(SENTENCE, "A second one.")
    assert single["input_ids"] == framed[0] and pair["input_ids"] == framed[1]
    if family == "bert":
        assert pair["token_type_ids"] == [0] * (len(ids) + 2) + [1] * (len(second) + 1)
    else:
        assert "token_type_ids" not in single
    assert hf.decode(single["input_ids"], skip_special_tokens=True) == SENTENCE
    assert (hf.pad_token_id, hf.eos_token_id, hf.model_max_length) == (tok.pad_id, tok.eos_id, 64)
    assert hf.padding_side == ("left" if family == "gpt" else "right")
    for text in EDGES[6:]:  # transformers keeps [MASK] and the sentinels where jaxlm finds them
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_a_framing_token_the_model_lacks_is_left_out(real_text_files, tmp_path):
    """A sentencepiece model without BOS (as Llama's has no pad) frames GPT inputs with none."""
    from transformers import AutoTokenizer

    spm.SentencePieceTrainer.train(
        input=[str(f) for f in real_text_files[:5]],
        model_prefix=str(tmp_path / "no-bos"),
        vocab_size=400,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        bos_id=-1,
        minloglevel=2,
    )
    write_hf_tokenizer(tmp_path / "no-bos.model", tmp_path / "hf", "gpt", max_len=64)
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.bos_token is None and hf.eos_token == "</s>"
    assert hf(SENTENCE)["input_ids"] == Tokenizer.load(tmp_path / "no-bos.model").encode(SENTENCE)


def test_models_without_an_exact_equivalent_are_refused(real_text_files, tmp_path):
    model = tmp_path / "nfkc.model"
    spm.SentencePieceTrainer.train(
        input=[str(f) for f in real_text_files[:5]],
        model_prefix=str(tmp_path / "nfkc"),
        vocab_size=300,
        minloglevel=2,
    )  # sentencepiece's defaults: NFKC normalization, extra whitespace removed
    with pytest.raises(ConversionError, match="'nmt_nfkc' normalization and its removal of"):
        fast_tokenizer(model)
    (tmp_path / "broken.model").write_bytes(b"\xff not a model")
    with pytest.raises(ConversionError, match="broken.model is not a readable sentencepiece"):
        fast_tokenizer(tmp_path / "broken.model")


# --- exported runs in transformers --------------------------------------------------------


# A run of each family: its preset, and what the small run changes besides its size.
RUNS = {
    "gpt": ["demo"],
    "bert": ["vader-sentiment"],
    "mlm": ["bert-base", "model.heads=[mlm]", "model.num_heads=4", "data.task=masked_lm"]
    + ["data.next_sentence=false"],
    "seq2seq": ["gettext-en-de", "model.num_decoder_layers=2", "model.sinusoidal_layout=halves"]
    + ["model.output_bias=true"],  # as Marian has them
    "t5": ["t5-small", "model.num_decoder_layers=2", "model.num_heads=4", "model.head_dim=16"]
    + ["optim.optimizer=adamw", "optim.schedule=cosine"],  # span corruption, as T5 pretrained
}


def _run(name: str, workdir: Path, files: list[Path]) -> Path:
    """A small run of `RUNS[name]`, trained briefly on real text: a GPT (BPE tokenizer), a
    classifier, a masked LM, a Marian-style translator and a T5 (unigram tokenizers, the T5's
    with sentinels)."""
    preset, *changes = RUNS[name]
    argv = [
        "train",
        preset,
        *changes,
        "model.num_layers=2",
        "model.embed_dim=64",
        "model.mlp_dim=128",
        "model.vocab_size=512",
        "model.dropout_rate=0",
        "data.seq_len=64",
        "data.batch_size=8",
        f"train.workdir={workdir}",
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=10",
        "train.steps=60",
        "train.eval_every=60",
        "train.progress_bar=false",
        "sample.prompts=[]",
        "sample.temperature=0",  # the export's generation_config.json: greedy, 8 new tokens
        "sample.max_new_tokens=8",
    ]
    if name in ("gpt", "mlm", "t5"):
        argv.append(f"data.train_files=[{','.join(map(str, files))}]")
    else:
        argv += _jsonl(name, workdir.parent / f"{name}.jsonl", files)
    assert cli.main(argv) == 0
    return workdir


def _jsonl(family: str, path: Path, files: list[Path]) -> list[str]:
    """A JSONL source of the files' lines: is a line about statements (classifier), and the line
    again (encoder-decoder: it learns to copy)."""
    lines = [line for f in files for line in f.read_text().splitlines() if line.strip()]
    if family == "bert":
        rows = [
            {"text": line, "label": "positive" if "statement" in line else "negative"}
            for line in lines[:2000]
        ]
    else:
        rows = [{"text": line, "target": line} for line in lines[:2000]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["data.source=jsonl", f"data.train_files=[{path}]"]


@pytest.fixture(scope="module")
def exported(real_text_files, tmp_path_factory):
    """name -> (workdir, its export) for each of `RUNS`."""
    runs = {}
    for name in RUNS:
        root = tmp_path_factory.mktemp(name)
        workdir = _run(name, root / "run", real_text_files[:20])
        assert cli.main(["convert", str(workdir), str(root / "hf"), "--to", "hf"]) == 0
        runs[name] = (workdir, root / "hf")
    return runs


def _unpadded(inputs) -> list[list[int]]:
    """The ids of each row of a padded `transformers` batch, without the padding."""
    rows = zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
    return [ids[mask.bool()].tolist() for ids, mask in rows]


PROMPTS = ["The list", "A class definition\nmay"]


def test_transformers_continues_an_exported_gpt_as_jaxlm_does(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jaxlm

    workdir, hf_dir = exported["gpt"]
    cfg, params, tokenizer = jaxlm.load_for_inference(workdir)
    expected = jaxlm.generate_text(cfg.model, params, tokenizer, PROMPTS, cfg.sample)

    hf_tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    inputs = hf_tokenizer(PROMPTS, return_tensors="pt", padding=True)  # left-padded
    prompt_rows = [[tokenizer.bos_id, *ids] for ids in tokenizer.encode_batch(PROMPTS)]
    assert _unpadded(inputs) == prompt_rows
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():  # as the run's sample settings say: greedy, 8 new tokens
        out = model.generate(**inputs)
    texts = hf_tokenizer.batch_decode(out, skip_special_tokens=True)
    assert [text[len(prompt) :] for text, prompt in zip(texts, PROMPTS, strict=True)] == expected
    assert all(text.startswith(prompt) for text, prompt in zip(texts, PROMPTS, strict=True))


def test_transformers_classifies_with_an_exported_classifier_as_jaxlm_does(exported):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import jaxlm

    workdir, hf_dir = exported["bert"]
    texts = [line for doc in pydoc_documents()[40:44] for line in doc.splitlines()[:6] if line]
    cfg, params, tokenizer = jaxlm.load_for_inference(workdir)
    labels = cfg.data.labels
    expected = jaxlm.classify_texts(cfg, params, tokenizer, texts, labels)

    hf_tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():
        logits = model(**hf_tokenizer(texts, return_tensors="pt", padding=True)).logits
    probabilities = torch.softmax(logits, dim=-1).numpy()
    assert [labels[i] for i in probabilities.argmax(-1)] == [label for label, _ in expected]
    np.testing.assert_allclose(probabilities.max(-1), [p for _, p in expected], atol=1e-5)


def test_transformers_fills_masks_with_an_exported_masked_lm_as_jaxlm_does(exported):
    from transformers import pipeline

    import jaxlm
    from jaxlm.decoding.fill_mask import fill_mask

    workdir, hf_dir = exported["mlm"]
    texts = ["The [MASK] statement is used to loop.", "A list [MASK] mutable, [MASK] tuple not."]
    cfg, params, tokenizer = jaxlm.load_for_inference(workdir)
    fill = pipeline("fill-mask", model=str(hf_dir), top_k=3)
    for text in texts:
        tokens = [[tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]]
        expected = [best for _, best in fill_mask(cfg.model, params, tokens, tokenizer.mask_id)[0]]
        got = fill(text)
        got = [got] if isinstance(got[0], dict) else got  # one mask: one list of guesses
        assert len(got) == text.count("[MASK]") == len(expected)
        for guesses, best in zip(got, expected, strict=True):
            assert [g["token"] for g in guesses] == [token for token, _ in best[:3]]
            np.testing.assert_allclose(
                [g["score"] for g in guesses], [p for _, p in best[:3]], atol=1e-5
            )


# Sources for the Marian-style translator (it learned to copy lines), and for the T5 (it learned
# to fill sentinel spans).
SOURCES = {
    "seq2seq": [line for line in pydoc_documents()[50].splitlines()[:4] if line],
    "t5": [
        "A list is a <extra_id_0> sequence of <extra_id_1> items.",
        "The for statement is used to <extra_id_0> over the elements of a sequence",
    ],
}


CLASSES = {"seq2seq": "MarianMTModel", "t5": "T5ForConditionalGeneration"}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_transformers_runs_an_exported_encoder_decoder_as_jaxlm_does(name, exported):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import jaxlm

    workdir, hf_dir = exported[name]
    cfg, params, tokenizer = jaxlm.load_for_inference(workdir)
    sources = SOURCES[name]
    expected = jaxlm.generate_text(cfg.model, params, tokenizer, sources, cfg.sample)

    hf_tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    inputs = hf_tokenizer(sources, return_tensors="pt", padding=True)
    source_rows = [[*ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(sources)]
    assert _unpadded(inputs) == source_rows
    if name == "t5":
        assert tokenizer.token_id("<extra_id_1>") in source_rows[0]
    model = AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir)).eval()
    assert type(model).__name__ == CLASSES[name]
    with torch.no_grad():  # the export's generation settings: no EOS forced, as in jaxlm
        out = model.generate(**inputs)
    assert hf_tokenizer.batch_decode(out, skip_special_tokens=True) == expected


def test_an_export_keeps_a_tokenizer_it_cannot_convert(exported, tmp_path):
    """A run on a sentencepiece model without an exact Hugging Face equivalent still exports,
    with its tokenizer.model and a warning."""
    import shutil

    from jaxlm.interop.workdir import export_workdir

    workdir, _ = exported["gpt"]
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    proto = read_model(copy / "tokenizer.model")
    proto.normalizer_spec.remove_extra_whitespaces = True
    (copy / "tokenizer.model").write_bytes(proto.SerializeToString())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_workdir(copy, tmp_path / "hf")
    assert "tokenizer is tokenizer.model alone" in str(caught[-1].message)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
    ]


def test_the_exports_generation_settings_are_the_runs():
    """Sampling and beam-search settings carry over as transformers names them (greedy ones are
    checked by the generation tests above, which call `generate` without arguments)."""
    from transformers import GenerationConfig

    import jaxlm
    from jaxlm.interop.generation import generation_config

    ids = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0, "forced_eos_token_id": 3}
    sampling = jaxlm.SampleConfig(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3)
    read = GenerationConfig(**generation_config(sampling, ids))
    assert (read.do_sample, read.temperature, read.top_k, read.top_p) == (True, 0.7, 40, 0.9)
    assert (read.repetition_penalty, read.max_new_tokens, read.eos_token_id) == (1.3, 100, 3)
    assert read.forced_eos_token_id is None  # jaxlm forces no EOS at the length limit
    beams = jaxlm.SampleConfig(num_beams=4, length_penalty=0.6, early_stopping=False)
    read = GenerationConfig(**generation_config(beams, ids))
    assert (read.do_sample, read.num_beams, read.length_penalty) == (False, 4, 0.6)
    assert read.early_stopping is False
