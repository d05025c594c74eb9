"""Sentencepiece tokenizer: training on text files, loading, and newline-safe encode/decode.

Special ids are fixed: pad=0, unk=1, bos=2, eos=3, and trained models add the user-defined
pieces [MASK], [CLS], [SEP] (ids 4, 5, 6) that the encoder tasks need, and, when asked, span
corruption's sentinels `<extra_id_0>`, `<extra_id_1>`, ... after them. Text is encoded one line at
a time and the lines are joined with the byte-fallback piece `<0x0A>`, so newlines survive and a
word after a newline tokenizes as it does at the start of a text. Models trained without byte
fallback have no such piece: they encode with plain sentencepiece, and newlines are lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import sentencepiece as spm

from jaxlm.data.span_corruption import SENTINEL
from jaxlm.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MASK_PIECE, CLS_PIECE, SEP_PIECE = "[MASK]", "[CLS]", "[SEP]"
NEWLINE_PIECE = "<0x0A>"


def document_start(tokenizer) -> list[int]:
    """What a GPT's documents and prompts start with: [bos] for a tokenizer that has a BOS
    token, [] for one without (Qwen2's, a sentencepiece model with bos_id -1)."""
    try:
        bos = tokenizer.bos_id
    except DataError:  # a Hugging Face tokenizer without one
        return []
    return [bos] if bos >= 0 else []


class Tokenizer:
    """A sentencepiece model with newline-preserving `encode` and `decode`."""

    def __init__(self, sp: spm.SentencePieceProcessor):
        self.sp = sp
        newline = sp.piece_to_id(NEWLINE_PIECE)
        # Models without byte fallback have no newline piece: plain sentencepiece encode/decode.
        self._newline = newline if sp.is_byte(newline) else None

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Loads a `.model` file; a missing or invalid one raises `DataError`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer model not found: {path}")
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(path.read_bytes())
        except RuntimeError:
            raise DataError(f"{path} is not a sentencepiece model") from None
        return cls(sp)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def mask_id(self) -> int:
        return self._user_defined(MASK_PIECE)

    @property
    def cls_id(self) -> int:
        return self._user_defined(CLS_PIECE)

    @property
    def sep_id(self) -> int:
        return self._user_defined(SEP_PIECE)

    def token_id(self, piece: str) -> int | None:
        """The id of `piece`, or None when the model has no such piece."""
        piece_id = self.sp.piece_to_id(piece)
        return None if self.sp.is_unknown(piece_id) else piece_id

    def piece(self, token_id: int) -> str:
        """The model's piece `token_id`."""
        return self.sp.id_to_piece(token_id)

    def fingerprint(self) -> str:
        """The sha256 of the model, which decides every id (token files record it)."""
        return hashlib.sha256(self.sp.serialized_model_proto()).hexdigest()

    def _user_defined(self, piece: str) -> int:
        """The id of a special piece; a model without it raises `DataError`."""
        piece_id = self.token_id(piece)
        if piece_id is None:
            raise DataError(
                f"the tokenizer has no {piece} piece, which this task needs: train one with "
                "`jaxlm tokenizer train` (it adds [MASK], [CLS] and [SEP])"
            )
        return piece_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; all lines of all texts go to sentencepiece in one call."""
        if self._newline is None:
            return self.sp.encode(list(texts))
        texts_lines = [text.split("\n") for text in texts]
        lines_ids = iter(self.sp.encode([line for lines in texts_lines for line in lines]))
        result = []
        for lines in texts_lines:
            ids = list(next(lines_ids))
            for _ in lines[1:]:
                ids.append(self._newline)
                ids.extend(next(lines_ids))
            result.append(ids)
        return result

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; pad, bos and eos (control pieces) decode to nothing."""
        ids = [int(i) for i in ids]
        if self._newline is None:
            return self.sp.decode(ids)
        lines = [[]]
        for i in ids:
            if i == self._newline:
                lines.append([])
            else:
                lines[-1].append(i)
        return "\n".join(self.sp.decode(lines))


def train_tokenizer(
    files: Sequence[Path],
    model_path: Path,
    vocab_size: int,
    model_type: str = "unigram",
    sample_lines: int = 200_000,
    byte_fallback: bool = True,
    sentinels: int = 0,
) -> Tokenizer:
    """Trains a sentencepiece model on up to `sample_lines` random lines of `files`, with
    `sentinels` sentinel pieces for span corruption.

    The model is written atomically to `model_path` (parent folders created). A vocab_size the
    text cannot support raises `DataError`.
    """
    what = f"{len(files)} tokenizer training file(s)"
    return _train(
        model_path,
        vocab_size,
        model_type,
        sample_lines,
        byte_fallback,
        sentinels,
        what,
        input=[str(f) for f in files],
    )


def train_tokenizer_on_texts(
    texts: Iterable[str],
    model_path: Path,
    vocab_size: int,
    model_type: str = "unigram",
    sample_lines: int = 200_000,
    byte_fallback: bool = True,
    sentinels: int = 0,
) -> Tokenizer:
    """`train_tokenizer` on the lines of in-memory texts (examples of a non-file source)."""
    lines = (line for text in texts for line in text.split("\n") if line)
    what = "tokenizer training texts"
    return _train(
        model_path,
        vocab_size,
        model_type,
        sample_lines,
        byte_fallback,
        sentinels,
        what,
        sentence_iterator=lines,
    )


def _train(
    model_path: Path,
    vocab_size: int,
    model_type: str,
    sample_lines: int,
    byte_fallback: bool,
    sentinels: int,
    what: str,
    **source,
) -> Tokenizer:
    """Trains on `source` (sentencepiece's `input` or `sentence_iterator`), described by `what`."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            **source,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=byte_fallback,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            input_sentence_size=sample_lines,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            user_defined_symbols=[
                MASK_PIECE,
                CLS_PIECE,
                SEP_PIECE,
                *(SENTINEL.format(i) for i in range(sentinels)),
            ],
            num_threads=os.cpu_count(),
            minloglevel=2,
            split_digits=True,
        )
    except RuntimeError as e:
        raise DataError(_training_error(str(e), vocab_size, what)) from None
    with atomic_write(model_path) as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model.getvalue())
    return Tokenizer(sp)


def _training_error(message: str, vocab_size: int, what: str) -> str:
    """One line for a sentencepiece training failure."""
    if too_high := re.search(r"Vocabulary size too high.*<= (\d+)", message):
        return (
            f"tokenizer vocab_size {vocab_size} is too large for its training text: "
            f"sentencepiece can learn at most {too_high[1]} pieces from it"
        )
    if too_low := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
        return (
            f"tokenizer vocab_size {vocab_size} is too small: its training text needs at least "
            f"{too_low[1]} pieces"
        )
    if "sentences_.empty()" in message:
        return f"the {what} contain no usable text"
    detail = message.split("] ", 1)[-1].strip() or message.strip()
    return f"could not train a tokenizer on the {what}: {detail.splitlines()[0]}"


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` (parent folders created) only once fully written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
