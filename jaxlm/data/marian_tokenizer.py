"""Marian's tokenizer (the OPUS-MT models), with the interface of `jaxlm.data.tokenizer.Tokenizer`.

A Marian directory holds `source.spm` and `target.spm` (sentencepiece models of the two
languages) and `vocab.json`, the model's one vocabulary: sentencepiece splits a text into
pieces, `vocab.json` numbers them (a piece it lacks is `<unk>`). Sources are split by
`source.spm`, targets (`encode_target_batch`) and translations (`decode`) by `target.spm`. A
leading language code such as `>>de<<` (multilingual models) stays one token. The decoder starts
from the padding token, which `bos_id` therefore names. Texts are not punctuation-normalized
(transformers does so only when `sacremoses` is installed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from jaxlm.data.tokenizer_config import TOKENIZER_CONFIG, read_json, token_text
from jaxlm.errors import DataError

SOURCE_SPM, TARGET_SPM, VOCAB_JSON = "source.spm", "target.spm", "vocab.json"
FILES = (SOURCE_SPM, TARGET_SPM, VOCAB_JSON)
SPECIAL = {"pad": "<pad>", "unk": "<unk>", "eos": "</s>"}  # defaults of tokenizer_config.json
WORD_MARK = "\u2581"  # sentencepiece's start-of-word mark


def _sentencepiece(path: Path) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError):
        raise DataError(f"{path} is not a sentencepiece model") from None
    return sp


class MarianTokenizer:
    """Source and target sentencepiece models over one `vocab.json` (see the module doc)."""

    def __init__(self, source, target, vocab: dict[str, int], special: dict[str, str]):
        self.source, self.target, self.vocab = source, target, vocab
        self.pieces = {i: piece for piece, i in vocab.items()}
        missing = [token for token in special.values() if token not in vocab]
        if missing:
            raise DataError(f"{VOCAB_JSON} lacks the special tokens {', '.join(missing)}")
        self.special_ids = {name: vocab[token] for name, token in special.items()}

    @classmethod
    def load(cls, directory: Path) -> MarianTokenizer:
        """From a directory of `FILES` and its `tokenizer_config.json`."""
        settings = read_json(directory / TOKENIZER_CONFIG)
        if settings.get("separate_vocabs"):
            raise DataError(f"{directory}: Marian tokenizers with separate vocabularies")
        try:
            vocab = json.loads((directory / VOCAB_JSON).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{directory / VOCAB_JSON}: not a vocabulary ({e})") from None
        special = {
            name: token_text(settings.get(f"{name}_token", token))
            for name, token in SPECIAL.items()
        }
        source, target = (_sentencepiece(directory / name) for name in (SOURCE_SPM, TARGET_SPM))
        return cls(source, target, vocab, special)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.special_ids["pad"]

    @property
    def bos_id(self) -> int:
        """The decoder's first input: Marian starts from the padding token."""
        return self.special_ids["pad"]

    @property
    def eos_id(self) -> int:
        return self.special_ids["eos"]

    def _ids(self, sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids: its leading language code whole, the rest split by `sp` (all the
        texts in one call)."""
        codes, rests = [], []
        for text in texts:
            end = text.find("<<") if text.startswith(">>") else -1
            codes.append([text[: end + 2]] if end != -1 else [])
            rests.append(text[end + 2 :] if end != -1 else text)
        unk = self.special_ids["unk"]
        return [
            [self.vocab.get(piece, unk) for piece in code + pieces]
            for code, pieces in zip(codes, sp.encode(rests, out_type=str), strict=True)
        ]

    def encode(self, text: str) -> list[int]:
        """Token ids of a source text, without special tokens."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._ids(self.source, texts)

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of target texts, split by the target language's model."""
        return self._ids(self.target, texts)

    def token_id(self, token: str) -> int | None:
        """The id of `token`, or None when the vocabulary has no such token."""
        return self.vocab.get(token)

    def piece(self, token_id: int) -> str:
        """The vocabulary's text of `token_id`."""
        return self.pieces[token_id]

    def fingerprint(self) -> str:
        """The sha256 of both sentencepiece models, the vocabulary and the special tokens."""
        digest = hashlib.sha256()
        for sp in (self.source, self.target):
            digest.update(sp.serialized_model_proto())
        digest.update(json.dumps([self.vocab, self.special_ids], sort_keys=True).encode())
        return digest.hexdigest()

    def decode(self, ids: Sequence[int]) -> str:
        """The target text of `ids`; special tokens decode to nothing."""
        special = set(self.special_ids.values())
        pieces = [
            self.pieces[int(i)] for i in ids if int(i) not in special and int(i) in self.pieces
        ]
        # Pieces the target model lacks come back as they are, their word marks included.
        return self.target.decode_pieces(pieces).replace(WORD_MARK, " ").strip()
