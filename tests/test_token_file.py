"""Token files: writing, validation, packed batches like lm_dataset's, resume and sharding."""

import json
import subprocess
import sys

import numpy as np
import pytest
from packing_reference import FEATURES, packed_rows, stacked

from jaxlm.cli import main
from jaxlm.data.documents import read_documents
from jaxlm.data.token_file import TokenFile, sidecar_path, write_token_file
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import DataError


@pytest.fixture(scope="module")
def tokenizer_path(real_text_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    train_tokenizer(real_text_files, path, vocab_size=512, model_type="bpe")
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    return Tokenizer.load(tokenizer_path)


@pytest.fixture(scope="module")
def documents(real_text_files):
    return read_documents(real_text_files[:6], "paragraph")


@pytest.fixture(scope="module")
def token_file(documents, tokenizer, tmp_path_factory):
    return write_token_file(documents, tokenizer, tmp_path_factory.mktemp("tokens") / "t.tokens")


def assert_batch_equal(got, want):
    assert sorted(got) == sorted(FEATURES)
    for key in FEATURES:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got[key].dtype == (np.float32 if key == "weights" else np.int32), key


def rows_of(reference, index):
    return {key: value[index] for key, value in reference.items()}


def test_file_contents(token_file, documents, tokenizer):
    expected = [t for doc in documents for t in (2, *tokenizer.encode(doc), 3)]
    np.testing.assert_array_equal(token_file.tokens, expected)
    assert token_file.tokens.dtype == np.uint16
    meta = json.loads(sidecar_path(token_file.path).read_text())
    assert meta["tokens"] == len(expected) and meta["documents"] == len(documents)
    assert meta | {"dtype": "uint16", "vocab_size": 512, "bos_id": 2, "eos_id": 3} == meta
    assert token_file.path.stat().st_size == 2 * len(expected)
    token_file.check_tokenizer(tokenizer)


def test_unshuffled_rows_match_reference_and_lm_dataset(token_file, documents, tokenizer):
    from jaxlm.data.pipeline import lm_dataset

    seq_len, batch_size = 48, 4
    reference = stacked(packed_rows(documents, tokenizer, seq_len))
    assert token_file.num_rows(seq_len) == len(reference["inputs"])
    batches = list(token_file.batches(seq_len, batch_size, shuffle=False, repeat=False))
    assert len(batches) == len(reference["inputs"]) // batch_size
    dataset = lm_dataset(
        documents, tokenizer, seq_len=seq_len, batch_size=batch_size, seed=0, shuffle=False
    )
    for k, (batch, tf_batch) in enumerate(zip(batches, dataset.as_numpy_iterator(), strict=False)):
        want = rows_of(reference, slice(k * batch_size, (k + 1) * batch_size))
        assert_batch_equal(batch, want)
        assert_batch_equal(batch, tf_batch)


def test_shuffled_batches_are_whole_rows_each_once_per_epoch(token_file, documents, tokenizer):
    seq_len, batch_size = 32, 5
    reference = stacked(packed_rows(documents, tokenizer, seq_len))
    rows = len(reference["inputs"])
    index_of = {row.tobytes(): i for i, row in enumerate(reference["inputs"])}
    assert len(index_of) == rows  # rows are told apart by their inputs
    seen = []
    for batch in token_file.batches(seq_len, batch_size, seed=7):
        indices = [index_of[row.astype(np.int64).tobytes()] for row in batch["inputs"]]
        assert_batch_equal(batch, rows_of(reference, indices))
        seen += indices
        if len(seen) >= 2 * rows:
            break
    assert sorted(seen[:rows]) == list(range(rows))  # epoch 0: a permutation of all rows
    assert sorted(seen[rows : 2 * rows]) == list(range(rows))
    assert seen[:rows] != list(range(rows)) and seen[:rows] != seen[rows : 2 * rows]


def test_resume_and_seeds(documents, tokenizer, tmp_path):
    token_file = write_token_file(documents[:10], tokenizer, tmp_path / "small.tokens")

    def take(n, **kwargs):
        iterator = token_file.batches(16, 8, **kwargs)
        return [next(iterator) for _ in range(n)]

    fresh = take(40, seed=3)
    assert 40 * 8 > 2 * token_file.num_rows(16)  # several epochs
    for k in (0, 1, 17, 39):
        assert_batch_equal(take(1, seed=3, start=k)[0], fresh[k])
    other = take(3, seed=4)
    assert not np.array_equal(other[0]["inputs"], fresh[0]["inputs"])
    assert_batch_equal(take(3, seed=3)[2], fresh[2])


def test_processes_read_disjoint_rows_of_the_global_batch(token_file):
    global_batches = token_file.batches(24, 6, seed=1)
    shards = [token_file.batches(24, 6, seed=1, process_index=i, process_count=2) for i in (0, 1)]
    for _ in range(5):
        full = next(global_batches)
        first, second = next(shards[0]), next(shards[1])
        assert first["inputs"].shape == (3, 24)
        assert_batch_equal(first, {key: value[:3] for key, value in full.items()})
        assert_batch_equal(second, {key: value[3:] for key, value in full.items()})
    with pytest.raises(DataError, match="batch_size 6 cannot be split over 4 processes"):
        next(token_file.batches(24, 6, process_count=4))


def test_split_holds_out_whole_documents(token_file):
    train, held_out = token_file.split(0.1)
    tokens = np.asarray(token_file.tokens)
    np.testing.assert_array_equal(np.concatenate([train.tokens, held_out.tokens]), tokens)
    assert held_out.tokens[0] == 2 and train.tokens[-1] == 3
    assert 0.05 < len(held_out) / len(token_file) <= 0.1
    assert token_file.split(0) == (token_file, None)
    eval_batches = list(held_out.batches(16, 2, shuffle=False, repeat=False))
    assert len(eval_batches) == held_out.num_rows(16) // 2
    one_document = write_token_file(
        [[10, 11, 12]], _FakeTokenizer(512), token_file.path.parent / "one"
    )
    with pytest.raises(DataError, match="eval_fraction=0.5 holds out no whole document"):
        one_document.split(0.5)


class _FakeTokenizer:
    """What the writer needs of a tokenizer, with any vocabulary size."""

    bos_id, eos_id = 2, 3

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def fingerprint(self):
        return "fake"

    def encode_batch(self, texts):
        return [[ord(c) for c in text] for text in texts]


def test_large_vocabulary_is_uint32(tmp_path):
    documents = [[65_535, 65_536, 69_999], "hi"]
    token_file = write_token_file(documents, _FakeTokenizer(70_000), tmp_path / "big")
    assert token_file.tokens.dtype == np.uint32
    np.testing.assert_array_equal(token_file.tokens, [2, 65_535, 65_536, 69_999, 3, 2, 104, 105, 3])


def test_writer_errors(tmp_path):
    path = tmp_path / "t.tokens"
    for documents, message in [
        ([[5, 6], [7, 512]], r"document 1 has token ids outside \[0, 512\)"),
        ([[5, 3, 6]], "document 0 holds the bos or eos id"),
        ([], "no documents to write"),
    ]:
        with pytest.raises(DataError, match=message):
            write_token_file(documents, _FakeTokenizer(512), path)
        assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_open_errors(tmp_path):
    path = tmp_path / "t.tokens"
    with pytest.raises(DataError, match="token file not found: .*jaxlm data tokenize"):
        TokenFile.open(path)
    write_token_file([[5, 6, 7], [8]], _FakeTokenizer(512), path)
    sidecar = sidecar_path(path)
    meta = json.loads(sidecar.read_text())

    def open_with(message, tokens=None, **changes):
        sidecar.write_text(json.dumps({**meta, **changes}))
        if tokens is not None:
            path.write_bytes(np.array(tokens, np.uint16).tobytes())
        with pytest.raises(DataError, match=message) as error:
            TokenFile.open(path)
        assert "\n" not in str(error.value)

    open_with(r"holds 14 bytes but its sidecar says 8 uint16 tokens", tokens=[2, 5, 6, 7, 3, 2, 8])
    open_with(
        r"token 3 is id 600, outside the sidecar's vocabulary of 512", [2, 5, 6, 600, 3, 2, 8, 3]
    )
    open_with("is not a jaxlm-tokens-1 sidecar", format="other")
    open_with("dtype 'int8' is not uint16 or uint32", dtype="int8")
    sidecar.write_text("{not json")
    with pytest.raises(DataError, match="cannot read .*t.tokens.json"):
        TokenFile.open(path)
    sidecar.unlink()
    with pytest.raises(DataError, match="has no sidecar t.tokens.json"):
        TokenFile.open(path)


def test_batch_errors(tmp_path, tokenizer):
    token_file = write_token_file([[5, 6, 7]], _FakeTokenizer(512), tmp_path / "t")
    with pytest.raises(DataError, match="5 tokens are fewer than one row of seq_len \\+ 1 = 9"):
        next(token_file.batches(8, 1))
    with pytest.raises(DataError, match="1 rows of 3 tokens are fewer than one batch of 2"):
        next(token_file.batches(2, 2, repeat=False))
    with pytest.raises(DataError, match="written with another tokenizer"):
        token_file.check_tokenizer(tokenizer)


def test_reading_needs_no_tensorflow(token_file):
    code = (
        "import sys; from jaxlm.data.token_file import TokenFile; "
        f"b = next(TokenFile.open({str(token_file.path)!r}).batches(16, 2)); "
        "assert b['inputs'].shape == (2, 16); assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_tokenize(tokenizer_path, tokenizer, real_text_files, tmp_path, capsys):
    files = [str(f) for f in real_text_files[:3]]
    output = tmp_path / "cli.tokens"
    argv = ["data", "tokenize", *files, "--output", str(output), "--tokenizer", str(tokenizer_path)]
    assert main([*argv, "--unit", "paragraph"]) == 0
    documents = read_documents(real_text_files[:3], "paragraph")
    assert capsys.readouterr().out.startswith(f"wrote {output}: {len(documents)} documents")
    expected = [t for doc in documents for t in (2, *tokenizer.encode(doc), 3)]
    np.testing.assert_array_equal(TokenFile.open(output).tokens, expected)

    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  train_files: {files}\n  document_unit: line\n")
    assert (
        main(["data", "tokenize", str(config), "data.eval_fraction=0.5", "--output", str(output)])
        == 2
    )
    assert "no tokenizer: pass --tokenizer" in capsys.readouterr().err
    argv = [
        "data",
        "tokenize",
        str(config),
        "--output",
        str(output),
        "--tokenizer",
        str(tokenizer_path),
    ]
    assert main(argv) == 0
    lines = read_documents(real_text_files[:3], "line")  # every line: eval_fraction is ignored
    expected = [t for doc in lines for t in (2, *tokenizer.encode(doc), 3)]
    np.testing.assert_array_equal(TokenFile.open(output).tokens, expected)


def test_a_workdirs_hugging_face_tokenizer_writes_and_checks_token_files(
    tokenizer_path, tokenizer, real_text_files, tmp_path, capsys
):
    """An imported workdir's tokenizer/ (here the fast tokenizer of the sentencepiece model: the
    same ids from other files) is what `jaxlm data tokenize CONFIG` writes with and what a run on
    the token file checks it against; a workdir with another tokenizer is refused."""
    from jaxlm.config import load_config
    from jaxlm.data.hf_tokenizer import HFTokenizer
    from jaxlm.data.loader import training_data
    from jaxlm.interop.fast_tokenizer import write_hf_tokenizer

    workdir = tmp_path / "run"
    write_hf_tokenizer(tokenizer_path, workdir / "tokenizer", "gpt", max_len=128)
    files = [str(f) for f in real_text_files[:3]]
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  train_files: {files}\ntrain:\n  workdir: {workdir}\n")
    output = tmp_path / "hf.tokens"
    assert main(["data", "tokenize", str(config), "--output", str(output)]) == 0
    documents = read_documents(real_text_files[:3], "file")
    expected = [t for doc in documents for t in (2, *tokenizer.encode(doc), 3)]
    np.testing.assert_array_equal(TokenFile.open(output).tokens, expected)

    on_tokens = [f"data.train_files=[{output}]", "data.source=tokens", "data.eval_fraction=0"]
    data = training_data(load_config(str(config), on_tokens), workdir, log=lambda line: None)
    assert isinstance(data.tokenizer, HFTokenizer)
    with pytest.raises(DataError, match="written with another tokenizer"):
        TokenFile.open(output).check_tokenizer(tokenizer)  # the same ids, another definition
    other = tmp_path / "other"
    train_tokenizer(real_text_files[3:6], other / "tokenizer.model", 400, sample_lines=500)
    with pytest.raises(DataError, match="written with another tokenizer"):
        training_data(load_config(str(config), [*on_tokens, f"train.workdir={other}"]), other)
