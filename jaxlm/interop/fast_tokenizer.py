"""jaxlm's sentencepiece tokenizers as Hugging Face fast tokenizers (`tokenizer.json`).

`fast_tokenizer(model)` builds a `tokenizers.Tokenizer` that gives the ids
`jaxlm.data.tokenizer.Tokenizer` gives, and decodes them to the same text:

- the model: Unigram with the pieces' scores, or BPE with merges rebuilt from the pieces (a
  piece made of two others merges them, in the order of the pieces); control, byte and
  user-defined pieces are never matched inside text;
- models with byte fallback: every line is encoded on its own, with its own `▁` prefix, and the
  newline is the byte piece `<0x0A>` (as jaxlm encodes); models without: sentencepiece's plain
  encoding of the whole text;
- user-defined pieces ([MASK], [CLS], [SEP], `<extra_id_N>`) are found in the text as
  sentencepiece finds them, and decode to their text; pad, BOS and EOS are special tokens.

Three differences remain: text that spells a special token (`<s>`) reads as that token, as in
every `transformers` tokenizer; a text that is only a user-defined piece gets no `▁` before
it; and Unigram segmentations of equal score may split in another order (sentencepiece's
float32 sums decide between them). Only what jaxlm trains converts: models with
sentencepiece's `identity` normalization that keep extra whitespace. Others raise
`ConversionError`.

`write_hf_tokenizer` saves one with a `tokenizer_config.json` that `transformers`'
`AutoTokenizer` loads, and that frames inputs as the model family's rows do: `<s> text` (GPT),
`[CLS] a [SEP] b [SEP]` (BERT), `text </s>` (encoder-decoder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from jaxlm.data.hf_tokenizer import TOKENIZER_JSON
from jaxlm.data.tokenizer import CLS_PIECE, MASK_PIECE, NEWLINE_PIECE, SEP_PIECE
from jaxlm.data.tokenizer_config import TOKENIZER_CONFIG
from jaxlm.errors import ConversionError

SPACE = "\u2581"  # sentencepiece's whitespace
Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
UNIGRAM, BPE = 1, 2  # sentencepiece's TrainerSpec.ModelType
NEVER = -1e9  # the Unigram score of pieces that text never matches


def read_model(model_file: Path) -> sentencepiece_model_pb2.ModelProto:
    """The parsed sentencepiece model; `ConversionError` when it is not one jaxlm converts."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, or a missing file's OSError
        raise ConversionError(f"{model_file} is not a readable sentencepiece model") from None
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    problems = []
    if spec.precompiled_charsmap or spec.name not in ("", "identity"):
        problems.append(f"its {spec.name!r} normalization")
    if spec.remove_extra_whitespaces:
        problems.append("its removal of extra whitespace")
    if trainer.model_type not in (UNIGRAM, BPE):
        problems.append("a model type other than unigram or BPE")
    if problems:
        raise ConversionError(
            f"{model_file}: no exact Hugging Face equivalent for {' and '.join(problems)} "
            "(jaxlm tokenizer train makes models that convert)"
        )
    return proto


def fast_tokenizer(model_file: Path) -> Tokenizer:
    """The Hugging Face tokenizer equivalent to the sentencepiece model `model_file`."""
    return _tokenizer(read_model(model_file))


def _tokenizer(proto) -> Tokenizer:
    pieces = proto.pieces
    by_type = {kind: [p.piece for p in pieces if p.type == kind] for kind in Piece.Type.values()}
    user_defined = by_type[Piece.USER_DEFINED]
    lines = proto.trainer_spec.byte_fallback and NEWLINE_PIECE in by_type[Piece.BYTE]
    tokenizer = Tokenizer(_model(proto))
    tokenizer.normalizer = _normalizer(proto.normalizer_spec.add_dummy_prefix, lines, user_defined)
    splits = [pre_tokenizers.Split("\n", "isolated")] if lines else []
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.Metaspace(SPACE, prepend_scheme="never", split=True)]
    )
    tokenizer.decoder = _decoder(proto, lines)
    control = [AddedToken(p, special=True, normalized=False) for p in by_type[Piece.CONTROL]]
    tokenizer.add_special_tokens(control)
    tokenizer.add_tokens([AddedToken(p, special=False, normalized=True) for p in user_defined])
    return tokenizer


def _model(proto) -> models.Model:
    """Unigram or BPE over the pieces, with sentencepiece's byte fallback and unknown piece."""
    trainer = proto.trainer_spec
    unknown = proto.pieces[trainer.unk_id].piece
    if trainer.model_type == UNIGRAM:
        vocab = [(p.piece, p.score if p.type == Piece.NORMAL else NEVER) for p in proto.pieces]
        return models.Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == Piece.NORMAL}
    ranked = sorted(
        (rank, normal[piece[:cut]], piece[:cut], piece[cut:])
        for piece, rank in normal.items()
        for cut in range(1, len(piece))
        if piece[:cut] in normal and piece[cut:] in normal
    )
    merges = [(left, right) for _, _, left, right in ranked]
    return models.BPE(
        vocab, merges, unk_token=unknown, byte_fallback=trainer.byte_fallback, fuse_unk=True
    )


def _decoder(proto, lines: bool) -> decoders.Decoder:
    """Pieces to text as sentencepiece decodes: bytes joined into characters, `▁` as spaces,
    the first piece's (every line's, with `lines`) `▁` prefix dropped, the unknown piece as
    sentencepiece's surface text for it."""
    unknown = proto.pieces[proto.trainer_spec.unk_id].piece
    prefix = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    steps = [
        decoders.Replace(unknown, proto.trainer_spec.unk_surface),
        decoders.ByteFallback(),
        decoders.Metaspace(SPACE, prepend_scheme=prefix, split=True),
        decoders.Fuse(),
    ]
    if lines and prefix == "always":
        steps.append(decoders.Replace("\n ", "\n"))
    return decoders.Sequence(steps)


def _normalizer(dummy_prefix: bool, lines: bool, user_defined: list[str]) -> normalizers.Normalizer:
    """Spaces become `▁`; with `dummy_prefix`, a `▁` starts the text (every non-empty line, when
    `lines`). A text that is only a user-defined piece gets none: that is how a user-defined
    added token is matched in normalized text, and sentencepiece adds no `▁` inside a line."""
    steps = [normalizers.Replace(" ", SPACE)]
    if dummy_prefix:
        alone = "|".join(re.escape(piece) for piece in user_defined)
        unless_alone = f"(?!(?:{alone})\\z)" if alone else ""
        starts = "[^\n]" if lines else "[\\s\\S]"  # a line's first character, or the text's
        steps.append(normalizers.Replace(Regex(f"\\A{unless_alone}(?={starts})"), SPACE))
        if lines:
            steps.append(normalizers.Replace(Regex("\n(?=[^\n])"), "\n" + SPACE))
    return normalizers.Sequence(steps)


# The special tokens a model family's inputs are framed with, as a TemplateProcessing template.
TEMPLATES = {
    "gpt": ("bos $A", "bos $A $B:1"),
    "bert": ("cls $A sep", "cls $A sep $B:1 sep:1"),
    "seq2seq": ("$A eos", "$A eos $B:1 eos:1"),
}
SPECIAL_IDS = ("pad", "unk", "bos", "eos")  # sentencepiece's fixed ones, by TrainerSpec field
USER_SPECIAL = {"mask": MASK_PIECE, "cls": CLS_PIECE, "sep": SEP_PIECE}


def special_tokens(proto) -> dict[str, str]:
    """{"pad": "<pad>", "bos": "<s>", ..., "mask": "[MASK]", ...}: those the model has."""
    tokens = {}
    for name in SPECIAL_IDS:
        index = getattr(proto.trainer_spec, f"{name}_id")
        if 0 <= index < len(proto.pieces):
            tokens[name] = proto.pieces[index].piece
    present = {p.piece for p in proto.pieces}
    tokens.update({name: piece for name, piece in USER_SPECIAL.items() if piece in present})
    return tokens


def write_hf_tokenizer(model_file: Path, directory: Path, family: str, max_len: int) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` of the sentencepiece model into
    `directory`, framing inputs as `family`'s rows are (see the module doc)."""
    proto = read_model(model_file)
    tokenizer = _tokenizer(proto)
    special = special_tokens(proto)
    tokenizer.post_processor = _framing(tokenizer, family, special)
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left" if family == "gpt" else "right",
        "model_input_names": ["input_ids", "attention_mask"]
        + (["token_type_ids"] if family == "bert" else []),
        **{f"{name}_token": token for name, token in special.items()},
    }
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_JSON))
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")


def _framing(tokenizer: Tokenizer, family: str, special: dict[str, str]):
    """The family's `TEMPLATES` as a post-processor, without the special tokens the model lacks
    (a GPT whose tokenizer has no BOS gets none)."""
    names = set()

    def filled(template: str) -> str:
        words = []
        for word in template.split():
            name, _, type_id = word.partition(":")
            if name in special:
                names.add(name)
                words.append(special[name] + (f":{type_id}" if type_id else ""))
            elif name.startswith("$"):
                words.append(word)
        return " ".join(words)

    single, pair = (filled(template) for template in TEMPLATES[family])
    used = [(special[name], tokenizer.token_to_id(special[name])) for name in sorted(names)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=used)
