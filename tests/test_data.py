"""The real-data path: sentencepiece tokenizer, text documents and packed causal-LM batches."""

import numpy as np
import pytest
from packing_reference import FEATURES, packed_rows, stacked

from jaxlm.data.documents import read_documents, resolve_files, split_documents
from jaxlm.data.pipeline import lm_dataset
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import DataError


@pytest.fixture(scope="module")
def tokenizer_path(real_text_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "nested" / "tokenizer.model"
    train_tokenizer(real_text_files, path, vocab_size=512)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    return Tokenizer.load(tokenizer_path)


# Tokenizer


def test_train_writes_model_atomically(tokenizer_path):
    assert tokenizer_path.is_file()
    assert [p.name for p in tokenizer_path.parent.iterdir()] == ["tokenizer.model"]


def test_round_trip_on_real_text(tokenizer, real_text_files):
    texts = [path.read_text(encoding="utf-8") for path in real_text_files]
    encoded = tokenizer.encode_batch(texts)
    assert encoded == [tokenizer.encode(text) for text in texts]
    assert [tokenizer.decode(ids) for ids in encoded] == texts
    assert all(0 <= i < tokenizer.vocab_size for ids in encoded for i in ids)


def test_special_ids(tokenizer):
    assert tokenizer.vocab_size == 512
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 2, 3)
    assert [tokenizer.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    ids = tokenizer.encode("The value is returned.")
    assert not {0, 2, 3} & set(ids)
    assert tokenizer.decode([2, *ids, 3, 0, 0]) == "The value is returned."
    assert tokenizer.encode("") == [] and tokenizer.decode([]) == ""


def test_newlines_are_byte_fallback_pieces(tokenizer):
    newline = tokenizer.sp.piece_to_id("<0x0A>")
    text = "\nfirst line\nsecond  line \n\n    indented code\n"
    ids = tokenizer.encode(text)
    assert ids.count(newline) == text.count("\n")
    assert tokenizer.decode(ids) == text
    # A word after a newline tokenizes as it does at the start of a text.
    assert tokenizer.encode("a\nfunction") == [
        *tokenizer.encode("a"),
        newline,
        *tokenizer.encode("function"),
    ]


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found: .*missing.model"):
        Tokenizer.load(tmp_path / "missing.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00\xffnot a model\x13\x37" * 10)
    with pytest.raises(DataError, match="garbage.model is not a sentencepiece model"):
        Tokenizer.load(garbage)


@pytest.mark.parametrize(
    ("vocab_size", "message"),
    [(100_000, r"too large .* at most \d+ pieces"), (100, r"too small: .* at least \d+ pieces")],
)
def test_train_vocab_size_errors(real_text_files, tmp_path, vocab_size, message):
    model = tmp_path / "tokenizer.model"
    with pytest.raises(DataError, match=message) as error:
        train_tokenizer(real_text_files[:3], model, vocab_size=vocab_size)
    assert "\n" not in str(error.value)
    assert not model.exists()


def test_train_without_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="contain no usable text"):
        train_tokenizer([empty], tmp_path / "tokenizer.model", vocab_size=512)


# Documents


def test_resolve_files(tmp_path, monkeypatch):
    for name in ("b.txt", "a.txt", "sub/deeper/c.txt", "d.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text")
    monkeypatch.setenv("HOME", str(tmp_path))
    files = resolve_files([f"{tmp_path}/**/*.txt", "~/a.txt", str(tmp_path / "b.txt")])
    assert files == [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "sub/deeper/c.txt"]
    with pytest.raises(DataError, match="no files match data.train_files entry '.*/x/\\*.txt'"):
        resolve_files([str(tmp_path / "a.txt"), str(tmp_path / "x/*.txt")])
    with pytest.raises(DataError, match="data.train_files is empty"):
        resolve_files([])


def test_read_documents_units(tmp_path):
    first, second, empty = tmp_path / "1.txt", tmp_path / "2.txt", tmp_path / "3.txt"
    first.write_text("Para one, line 1\n  line 2  \n\n\n \t\nPara two\n\n")
    second.write_text("Only line\r\n")
    empty.write_text("\n \n")
    files = [first, empty, second]
    assert read_documents(files, "file") == [
        "Para one, line 1\n  line 2  \n\n\n \t\nPara two",
        "Only line",
    ]
    assert read_documents(files, "paragraph") == [
        "Para one, line 1\n  line 2",
        "Para two",
        "Only line",
    ]
    assert read_documents(files, "line") == [
        "Para one, line 1",
        "  line 2",
        "Para two",
        "Only line",
    ]


def test_read_documents_errors(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt is not UTF-8 text .*offset 3"):
        read_documents([latin1], "file")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n")
    with pytest.raises(DataError, match="contain no text"):
        read_documents([blank], "line")


def test_split_documents():
    documents = [f"doc {i}" for i in range(10)]
    train, held_out = split_documents(documents, 0.2)
    assert held_out == ["doc 4", "doc 9"]
    assert train == [f"doc {i}" for i in (0, 1, 2, 3, 5, 6, 7, 8)]
    assert split_documents(documents, 0.2) == (train, held_out)
    assert split_documents(documents, 0.0) == (documents, [])
    with pytest.raises(DataError, match="eval_fraction=0.05 holds out none.*raise it"):
        split_documents(documents, 0.05)
    with pytest.raises(DataError, match="eval_fraction=0.9 leaves no training.*lower it"):
        split_documents(documents, 0.9)


# Pipeline


def reference_batches(documents, tokenizer, seq_len, batch_size, repeat, max_batches=None):
    """Packs documents in order with plain loops: a list of dicts of [batch, seq_len] arrays."""
    min_tokens = (max_batches or 0) * batch_size * (seq_len + 1)
    rows = packed_rows(documents, tokenizer, seq_len, repeat, min_tokens)
    batches = [
        stacked(rows[i : i + batch_size]) for i in range(0, len(rows) - batch_size + 1, batch_size)
    ]
    return batches[:max_batches]


def take(dataset, n):
    return list(dataset.take(n).as_numpy_iterator())


@pytest.fixture(scope="module")
def paragraphs(real_text_files):
    return read_documents(real_text_files[:6], "paragraph")


def assert_batches_equal(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert sorted(got) == sorted(FEATURES)
        for key in FEATURES:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_packing_matches_reference(tokenizer, paragraphs):
    kwargs = dict(seq_len=48, batch_size=3)
    dataset = lm_dataset(paragraphs, tokenizer, seed=0, shuffle=False, **kwargs)
    expected = reference_batches(paragraphs, tokenizer, repeat=True, max_batches=6, **kwargs)
    assert_batches_equal(take(dataset, 6), expected)


def test_packing_across_epochs_matches_reference(tokenizer):
    # Repeats of a single document follow each other: each repeat is a segment of its own.
    for documents in (["short"], ["one", "a somewhat longer document\nof two lines", "x"]):
        kwargs = dict(seq_len=16, batch_size=2)
        dataset = lm_dataset(documents, tokenizer, seed=0, shuffle=False, **kwargs)
        expected = reference_batches(documents, tokenizer, repeat=True, max_batches=5, **kwargs)
        assert_batches_equal(take(dataset, 5), expected)
        assert expected[-1]["segment_ids"].max() > 2


def test_without_repeat_ends_after_last_full_batch(tokenizer, paragraphs):
    kwargs = dict(seq_len=64, batch_size=4)
    dataset = lm_dataset(paragraphs, tokenizer, seed=0, shuffle=False, repeat=False, **kwargs)
    expected = reference_batches(paragraphs, tokenizer, repeat=False, **kwargs)
    assert len(expected) > 3
    assert_batches_equal(list(dataset.as_numpy_iterator()), expected)
    tiny = lm_dataset(["too short"], tokenizer, seed=0, repeat=False, **kwargs)
    assert list(tiny.as_numpy_iterator()) == []


def test_shapes_and_dtypes(tokenizer, paragraphs):
    dataset = lm_dataset(paragraphs, tokenizer, seq_len=32, batch_size=5, seed=0)
    for key, spec in dataset.element_spec.items():
        assert spec.shape == (5, 32)
        assert spec.dtype.name == ("float32" if key == "weights" else "int32")
    (batch,) = take(dataset, 1)
    assert {key: value.dtype for key, value in batch.items()} == {
        key: np.float32 if key == "weights" else np.int32 for key in FEATURES
    }


def test_shuffled_batches_are_consistent(tokenizer, paragraphs):
    dataset = lm_dataset(paragraphs, tokenizer, seq_len=64, batch_size=8, seed=3)
    for batch in take(dataset, 4):
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        # Every document starts with bos: a target from another document is exactly a bos.
        cross_document = batch["targets"] == tokenizer.bos_id
        np.testing.assert_array_equal(batch["weights"] == 0, cross_document)
        np.testing.assert_array_equal(cross_document, batch["inputs"] == tokenizer.eos_id)
        # Positions count up within a segment and restart at 0 where a segment starts.
        starts = np.diff(batch["segment_ids"], axis=1, prepend=0) != 0
        np.testing.assert_array_equal(starts, batch["positions"] == 0)
        np.testing.assert_array_equal(starts[:, 1:], batch["inputs"][:, 1:] == tokenizer.bos_id)
        steps = np.diff(batch["positions"], axis=1)
        assert np.all((steps == 1) | starts[:, 1:])
        assert np.all(batch["segment_ids"][:, 0] == 1)
        assert set(np.diff(batch["segment_ids"], axis=1).ravel()) <= {0, 1}


def test_seeds(tokenizer, paragraphs):
    def first_inputs(seed, shuffle=True, shuffle_buffer=1024, documents=paragraphs):
        dataset = lm_dataset(
            documents,
            tokenizer,
            seq_len=32,
            batch_size=4,
            seed=seed,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
        )
        return np.stack([batch["inputs"] for batch in take(dataset, 3)])

    np.testing.assert_array_equal(first_inputs(1), first_inputs(1))
    assert not np.array_equal(first_inputs(1), first_inputs(2))
    assert not np.array_equal(first_inputs(1), first_inputs(1, shuffle=False))
    # Documents alone (rows unshuffled) and rows alone (one document) are shuffled too.
    assert not np.array_equal(first_inputs(1, shuffle_buffer=1), first_inputs(2, shuffle_buffer=1))
    one_document = ["\n\n".join(paragraphs[:20])]
    assert not np.array_equal(
        first_inputs(1, documents=one_document), first_inputs(1, False, documents=one_document)
    )


def test_no_documents(tokenizer):
    with pytest.raises(DataError, match="no documents"):
        lm_dataset([], tokenizer, seq_len=8, batch_size=2, seed=0)


def _stderr_of(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return done.stderr


def test_tensorflow_imports_without_its_start_up_notices():
    """TensorFlow's C++ notices (oneDNN, CPU instruction sets) do not reach standard error."""
    plain = _stderr_of("import tensorflow")
    if not plain.strip():
        pytest.skip("this TensorFlow prints nothing when imported")
    assert _stderr_of("import jaxlm.data.pipeline") == ""


def test_what_a_failing_import_wrote_to_stderr_is_shown():
    block = (
        "import os\n"
        "from jaxlm.data.quiet_tensorflow import _stderr_kept_unless_failing as quiet\n"
        "with quiet():\n"
        "    os.write(2, b'kept back\\n')\n"
        "with quiet():\n"
        "    os.write(2, b'the reason\\n')\n"
        "    raise ImportError('broken')\n"
    )
    err = _stderr_of(block)
    assert "kept back" not in err
    assert err.index("the reason") < err.index("ImportError: broken")
