"""`jaxlm tokenizer train --files GLOB... --output PATH.model --vocab-size N [--type T] ...`,
`jaxlm tokenizer encode TOKENIZER TEXT` (any tokenizer `data.tokenizer` may name)."""

from __future__ import annotations

from jaxlm.cli.flags import at_least


def train(args) -> None:
    from jaxlm.data.documents import resolve_files
    from jaxlm.data.tokenizer import train_tokenizer

    files = resolve_files(args.files)
    tokenizer = train_tokenizer(
        files,
        args.output,
        args.vocab_size,
        args.type,
        args.sample_lines,
        args.byte_fallback,
        args.sentinels,
    )
    fallback = "byte fallback" if args.byte_fallback else "no byte fallback"
    sentinels = f", {args.sentinels} sentinels" if args.sentinels else ""
    print(
        f"wrote {args.output}: {args.type}, {tokenizer.vocab_size} pieces, {fallback}"
        f"{sentinels}, trained on {len(files)} file(s)"
    )


def encode(args) -> None:
    from jaxlm.data.hf_tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    ids = tokenizer.encode(args.text)
    print("ids:", *ids)
    print("pieces:", *(tokenizer.piece(i) for i in ids))


def register(commands) -> None:
    parser = commands.add_parser("tokenizer", help="train a sentencepiece tokenizer, encode text")
    actions = parser.add_subparsers(dest="action", required=True)
    training = actions.add_parser(
        "train", help="train on text files; adds pad, unk, bos, eos, [MASK], [CLS], [SEP]"
    )
    training.add_argument("--files", nargs="+", required=True, help="UTF-8 text files or globs")
    training.add_argument("--output", required=True, help="the model file to write (.model)")
    training.add_argument(
        "--vocab-size", type=at_least(1), required=True, help="pieces in the model"
    )
    training.add_argument("--type", choices=("unigram", "bpe"), default="unigram")
    training.add_argument(
        "--no-byte-fallback",
        dest="byte_fallback",
        action="store_false",
        help="unknown characters become <unk> instead of bytes, and newlines are not kept",
    )
    training.add_argument(
        "--sample-lines",
        type=at_least(0),
        default=200_000,
        help="random lines trained on (default 200000; 0 = all)",
    )
    training.add_argument(
        "--sentinels",
        type=at_least(0),
        default=0,
        help="add span corruption's sentinel pieces <extra_id_0> ... <extra_id_N-1> (default 0)",
    )
    training.set_defaults(run=train)
    encoding = actions.add_parser("encode", help="print the ids and pieces of a text")
    encoding.add_argument(
        "model",
        help="a sentencepiece .model file, a Hugging Face tokenizer.json or model directory, "
        "or package:<package>/<path>",
    )
    encoding.add_argument("text")
    encoding.set_defaults(run=encode)
