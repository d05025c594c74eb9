"""`jaxlm train CONFIG [section.key=value ...]`."""

from __future__ import annotations


def run(args) -> None:
    from jaxlm.config import load_config
    from jaxlm.train.trainer import train

    train(load_config(args.config, args.overrides))


def register(commands) -> None:
    parser = commands.add_parser("train", help="train a model from a config")
    parser.add_argument("config", help="a YAML file or a preset name")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.set_defaults(run=run)
