"""`jaxlm data tokenize CONFIG_OR_FILES... --output PATH [--tokenizer MODEL] [--unit U]`,
`jaxlm data show CONFIG [section.key=value ...] [--examples N] [--rows N]`."""

from __future__ import annotations

import dataclasses
import reprlib
import sys
from pathlib import Path

from jaxlm.cli.flags import at_least


def _is_config(name: str) -> bool:
    from jaxlm.config import preset_names

    return Path(name).suffix in (".yaml", ".yml") or name in preset_names()


def tokenize(args) -> None:
    from jaxlm.config import load_config
    from jaxlm.data.documents import read_documents, resolve_files
    from jaxlm.data.hf_tokenizer import configured_or_existing, load_tokenizer
    from jaxlm.data.sources import load_splits
    from jaxlm.data.token_file import write_token_file
    from jaxlm.errors import DataError

    model = args.tokenizer
    if _is_config(args.inputs[0]):
        cfg = load_config(args.inputs[0], args.inputs[1:])
        splits = load_splits(dataclasses.replace(cfg.data, eval_fraction=0))
        documents, skipped = list(splits.texts()), splits.skipped
        run = configured_or_existing(cfg.data.tokenizer, Path(cfg.train.workdir))
        model = model or (str(run) if run else "")  # token files need one
    else:
        skipped = {}
        documents = read_documents(resolve_files(args.inputs), args.unit, skipped)
    if not model:
        raise DataError(
            "no tokenizer: pass --tokenizer MODEL (train one with `jaxlm tokenizer train`)"
        )
    token_file = write_token_file(documents, load_tokenizer(model), args.output)
    skips = "".join(f", skipped {n} {what}" for what, n in skipped.items())
    print(
        f"wrote {args.output}: {len(documents)} documents, {len(token_file.tokens)} tokens "
        f"({token_file.tokens.dtype}){skips}"
    )


def show(args) -> None:
    from jaxlm.config import load_config
    from jaxlm.data.sources import load_splits

    cfg = load_config(args.config, args.overrides)
    data = cfg.data
    if data.source == "tokens":
        _show_token_file(cfg, args.rows)
        return
    splits = load_splits(data)
    print(f"{data.source} source, {data.task}: {splits.summary()}")
    shown = reprlib.Repr()
    shown.maxstring = args.chars or sys.maxsize  # longer texts keep their two ends
    for example in splits.train[: args.examples]:
        if data.task == "classification":
            example = (example[0], splits.labels[example[1]])
        print(shown.repr(example))
    if args.rows:
        _show_rows(cfg, splits, args.rows)


def _show_rows(cfg, splits, count: int) -> None:
    """The first `count` rows of the first training batch of `splits`, decoded."""
    from jaxlm.data.hf_tokenizer import workdir_tokenizer
    from jaxlm.data.loader import training_data
    from jaxlm.errors import DataError

    workdir = Path(cfg.train.workdir)
    if not (cfg.data.tokenizer or cfg.finetune.init_from or workdir_tokenizer(workdir).exists()):
        raise DataError(
            f"--rows decodes with the run's tokenizer, and {workdir} has none yet: set "
            "data.tokenizer, or train (which trains one there first)"
        )
    _print_rows(cfg, training_data(cfg, workdir, log=lambda line: None, splits=splits), count)


def _show_token_file(cfg, count: int) -> None:
    """A token file's size and, with `count`, its first training rows."""
    from jaxlm.data.loader import training_data
    from jaxlm.errors import DataError

    data = training_data(cfg, Path(cfg.train.workdir), log=lambda line: None)
    print(f"tokens source, {cfg.data.task}: {data.summary}")
    if not count:
        return
    if data.tokenizer is None:
        raise DataError("--rows decodes a token file's rows with data.tokenizer: set it")
    _print_rows(cfg, data, count)


def _print_rows(cfg, data, count: int) -> None:
    from jaxlm.data.row_text import row_lines

    batch = next(data.train_batches(0))
    for index in range(min(count, cfg.data.batch_size)):
        row = {key: values[index] for key, values in batch.items()}
        print(f"row {index}")
        for line in row_lines(cfg.data.task, row, data.tokenizer, data.labels):
            print(f"  {line}")


def register(commands) -> None:
    parser = commands.add_parser("data", help="inspect a config's data, write token files")
    actions = parser.add_subparsers(dest="action", required=True)
    tokenizing = actions.add_parser(
        "tokenize", help="tokenize a config's source (all examples) or text files to a token file"
    )
    tokenizing.add_argument(
        "inputs",
        nargs="+",
        metavar="CONFIG_OR_FILES",
        help="a YAML file or preset (then section.key=value overrides), or text files / globs",
    )
    tokenizing.add_argument("--output", required=True, help="the token file to write")
    tokenizing.add_argument(
        "--tokenizer",
        help="any tokenizer data.tokenizer may name (default: the config's, or its workdir's)",
    )
    tokenizing.add_argument(
        "--unit",
        choices=("file", "paragraph", "line"),
        default="file",
        help="text files: one document per file, paragraph or line",
    )
    tokenizing.set_defaults(run=tokenize)
    showing = actions.add_parser("show", help="count a config's examples and print the first")
    showing.add_argument("config", help="a YAML file or a preset name")
    showing.add_argument("overrides", nargs="*", help="section.key=value overrides")
    showing.add_argument(
        "--examples", type=at_least(0), default=5, help="training examples to print"
    )
    showing.add_argument(
        "--chars", type=at_least(0), default=400, help="characters shown of each text (0 = all)"
    )
    showing.add_argument(
        "--rows",
        type=at_least(0),
        default=0,
        help="also print the first N rows of the first training batch, decoded (needs the "
        "run's tokenizer)",
    )
    showing.set_defaults(run=show)
