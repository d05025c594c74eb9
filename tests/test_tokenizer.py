"""Tokenizer special pieces, round trips on real and non-ASCII text, and `jaxlm tokenizer`."""

import pytest
import sentencepiece as spm

from jaxlm.cli import main
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer, train_tokenizer_on_texts
from jaxlm.errors import DataError
from jaxlm.interop.fast_tokenizer import write_hf_tokenizer

MULTILINGUAL = (
    "Grüße aus Köln — «naïve» café\n"
    "Ελληνικά και русский текст\n\n"
    "日本語のテキスト 🙂 emoji\n"
    "  indented\ttabbed line  \n"
)


@pytest.fixture(scope="module")
def tokenizer(real_text_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    return train_tokenizer(real_text_files, path, vocab_size=512, model_type="bpe")


def test_special_pieces(tokenizer):
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(7)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>", "[MASK]", "[CLS]", "[SEP]"]
    assert (tokenizer.mask_id, tokenizer.cls_id, tokenizer.sep_id) == (4, 5, 6)
    # User-defined pieces are matched in text as one token and decode to themselves.
    ids = tokenizer.encode("[CLS] The [MASK] is here.[SEP]")
    assert [i for i in ids if i in (4, 5, 6)] == [5, 4, 6]
    assert tokenizer.decode(ids) == "[CLS] The [MASK] is here.[SEP]"


def test_round_trip_real_and_non_ascii_text(tokenizer, real_text_files):
    texts = [path.read_text(encoding="utf-8") for path in real_text_files[:20]] + [MULTILINGUAL]
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        assert tokenizer.decode(ids) == text
        # Newlines are byte pieces; characters outside the vocabulary are their UTF-8 bytes.
        assert ids.count(tokenizer.sp.piece_to_id("<0x0A>")) == text.count("\n")
    ids = tokenizer.encode("🙂")
    assert [tokenizer.sp.id_to_piece(i) for i in ids[-4:]] == [
        f"<0x{b:02X}>" for b in "🙂".encode()
    ]


@pytest.fixture(scope="module")
def plain_tokenizer(real_text_files, tmp_path_factory):
    """A sentencepiece model trained without jaxlm: no byte fallback, no special pieces."""
    prefix = tmp_path_factory.mktemp("plain") / "plain"
    spm.SentencePieceTrainer.train(
        input=[str(f) for f in real_text_files[:10]],
        model_prefix=str(prefix),
        vocab_size=300,
        minloglevel=2,
    )
    return Tokenizer.load(f"{prefix}.model")


def test_model_without_byte_fallback_uses_plain_sentencepiece(plain_tokenizer):
    text = "The assert statement"
    assert plain_tokenizer.encode(text) == plain_tokenizer.sp.encode(text)
    assert plain_tokenizer.decode(plain_tokenizer.encode(text)) == text


def test_model_without_special_pieces(plain_tokenizer):
    tokenizer = plain_tokenizer
    for name, piece in (("mask_id", "MASK"), ("cls_id", "CLS"), ("sep_id", "SEP")):
        with pytest.raises(DataError, match=rf"no \[{piece}\] piece.*jaxlm tokenizer train"):
            getattr(tokenizer, name)


def test_without_byte_fallback(real_text_files, tmp_path):
    tokenizer = train_tokenizer(
        real_text_files[:10], tmp_path / "t.model", 400, "unigram", byte_fallback=False
    )
    assert tokenizer.sp.piece_to_id("<0x0A>") == tokenizer.sp.unk_id()
    assert tokenizer.mask_id == 4
    ids = tokenizer.encode("naïve 日本")
    assert ids == tokenizer.sp.encode("naïve 日本")  # plain sentencepiece
    assert tokenizer.sp.unk_id() in ids


def test_train_on_texts_equals_train_on_files(real_text_files, tmp_path):
    files = real_text_files[:8]
    from_files = train_tokenizer(files, tmp_path / "files.model", 600, "bpe")
    texts = [path.read_text(encoding="utf-8") for path in files]
    from_texts = train_tokenizer_on_texts(texts, tmp_path / "texts.model", 600, "bpe")
    pieces = [from_files.sp.id_to_piece(i) for i in range(600)]
    assert [from_texts.sp.id_to_piece(i) for i in range(600)] == pieces
    with pytest.raises(DataError, match="the tokenizer training texts contain no usable text"):
        train_tokenizer_on_texts(["", "\n"], tmp_path / "empty.model", 300)


def test_cli_train_and_encode(real_text_files, tmp_path, capsys):
    model = tmp_path / "cli.model"
    folder = real_text_files[0].parent
    files = [f"{folder}/a*.txt", f"{folder}/b*.txt"]
    options = f"--output {model} --vocab-size 512 --type bpe --sample-lines 500".split()
    argv = ["tokenizer", "train", "--files", *files, *options]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {model}: bpe, 512 pieces, byte fallback")
    text = "Grüße,\nworld [MASK]"
    assert main(["tokenizer", "encode", str(model), text]) == 0
    tokenizer = Tokenizer.load(model)
    ids = tokenizer.encode(text)
    pieces = [tokenizer.sp.id_to_piece(i) for i in ids]
    printed = ["ids: " + " ".join(map(str, ids)), "pieces: " + " ".join(pieces)]
    assert capsys.readouterr().out.splitlines() == printed
    write_hf_tokenizer(model, tmp_path / "hf", "gpt", max_len=64)  # any tokenizer jaxlm reads
    assert main(["tokenizer", "encode", str(tmp_path / "hf"), text]) == 0
    assert capsys.readouterr().out.splitlines() == printed
    assert main(["tokenizer", "encode", str(tmp_path / "missing.model"), "x"]) == 2
    assert (
        capsys.readouterr().err
        == f"jaxlm: error: tokenizer model not found: {tmp_path}/missing.model\n"
    )
