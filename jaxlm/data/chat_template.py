"""Chat templates: the Jinja template of an instruct model's tokenizer that frames a
conversation (a list of {"role": ..., "content": ...} messages) as the text the model was tuned
on, rendered as `transformers`' `apply_chat_template` renders it.

A tokenizer directory holds the template in `chat_template.jinja` (as transformers 5 saves it)
or under `chat_template` in `tokenizer_config.json` (a string, or named templates of which the
one named "default" is used). Templates are untrusted code: they run in Jinja's immutable
sandbox.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jaxlm.data.tokenizer_config import TOKENIZER_CONFIG, read_json
from jaxlm.errors import DataError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
Message = dict[str, str]


def read_chat_template(directory: Path) -> str | None:
    """The chat template of a tokenizer directory, or None when it has none."""
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text()
    template = read_json(directory / TOKENIZER_CONFIG).get("chat_template")
    if isinstance(template, list):  # named templates
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


class _GenerationTags(Extension):
    """`{% generation %}...{% endgeneration %}`, which marks the assistant's text for
    transformers' masks: rendered as its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """JSON as `json.dumps` writes it (Jinja's own filter escapes HTML characters)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    """`template` compiled once (training renders every conversation's turns with it)."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTags, loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(template)


def render_chat(
    template: str,
    messages: list[Message],
    special_tokens: dict[str, str | None],
    add_generation_prompt: bool = True,
) -> str:
    """The text of `messages` framed by `template`, ending with the assistant's turn opened when
    `add_generation_prompt`. `special_tokens` ({"bos": "<s>", ...}) are the template's
    `bos_token`, `eos_token`, ...; a template that refuses the conversation (its
    `raise_exception`) or does not parse is a DataError."""
    if not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages):
        raise DataError("a conversation is a list of messages with a 'role' and a 'content'")
    tokens = {f"{name}_token": text for name, text in special_tokens.items() if text is not None}
    try:
        return _compiled(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )
    except jinja2.TemplateError as e:
        raise DataError(f"chat template: {' '.join(str(e).split())}") from None


def assistant_turns(
    template: str, messages: list[Message], special_tokens: dict[str, str | None]
) -> list[tuple[str, bool]]:
    """The rendered conversation in pieces, in order: the text before each assistant message
    (False) and that message as the template frames it, its end of turn included (True); turns
    after the last assistant message are left out. Each reply is what the template adds to the
    conversation before it with the assistant's turn opened; a template that renders earlier
    turns differently once later ones follow is a DataError."""
    pieces, done = [], ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        opened = render_chat(template, messages[:k], special_tokens, add_generation_prompt=True)
        replied = render_chat(template, messages[: k + 1], special_tokens, False)
        if not opened.startswith(done) or not replied.startswith(opened):
            raise DataError(
                "the chat template renders a conversation's earlier turns differently once "
                f"later turns follow (assistant message {k}), so its replies cannot be told apart"
            )
        pieces += [(opened[len(done) :], False), (replied[len(opened) :], True)]
        done = replied
    return pieces
