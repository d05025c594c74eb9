"""`jaxlm convert SRC DST --to jaxlm|hf [--step N]`: Hugging Face <-> jaxlm.

--to jaxlm: SRC is a Hugging Face model directory (config.json + model.safetensors, or shards
with model.safetensors.index.json) of GPT-2, BERT, Llama, Qwen2, Qwen3, Mistral, Marian or T5; DST
becomes a workdir for `jaxlm generate`, `jaxlm eval` and `jaxlm train DST/config.yaml`:
config.yaml, checkpoints/0 and SRC's tokenizer (its sentencepiece tokenizer.model, and its
Hugging Face tokenizer files in DST/tokenizer/) when it has one.
--to hf: SRC is a jaxlm workdir; DST gets config.json and model.safetensors of its latest
checkpoint (or --step), which `transformers` loads, and the run's tokenizer files (a
sentencepiece tokenizer.model with the tokenizer.json that encodes as it does).
"""

from __future__ import annotations

from pathlib import Path

from jaxlm.cli.flags import at_least
from jaxlm.errors import JaxlmError


def run(args) -> None:
    from jaxlm.data.hf_tokenizer import workdir_tokenizer
    from jaxlm.interop.workdir import export_workdir, import_workdir
    from jaxlm.models.summary import count_parameters

    source, destination = Path(args.source), Path(args.destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise JaxlmError(f"{destination} already exists and is not an empty folder")
    if args.to == "hf":
        step_dir = export_workdir(source, destination, args.step)
        files = ", ".join(sorted(path.name for path in destination.iterdir()))
        print(f"wrote {destination} ({files}) from checkpoint {step_dir}")
        return
    if args.step is not None:
        raise JaxlmError("--step selects the checkpoint to export: it needs --to hf")
    cfg = import_workdir(source, destination)
    print(
        f"wrote workdir {destination}: {cfg.model.family} model of "
        f"{count_parameters(cfg.model):,} parameters in checkpoints/0"
    )
    if not workdir_tokenizer(destination).exists():
        print(
            f"{source} has no tokenizer: put a sentencepiece tokenizer.model or a folder "
            f"tokenizer/ of Hugging Face tokenizer files in {destination} (or set "
            f"data.tokenizer in {destination / 'config.yaml'}) before generating or evaluating"
        )


def register(commands) -> None:
    parser = commands.add_parser(
        "convert", help="import a Hugging Face model into a workdir, or export one"
    )
    parser.add_argument("source", help="a Hugging Face model directory (--to jaxlm) or workdir")
    parser.add_argument("destination", help="the workdir (--to jaxlm) or model directory to write")
    parser.add_argument("--to", required=True, choices=("jaxlm", "hf"), help="the target format")
    parser.add_argument(
        "--step", type=at_least(0), help="--to hf: the checkpoint step (default: latest)"
    )
    parser.set_defaults(run=run)
