"""Chat templates: conversations framed as `transformers`' `apply_chat_template` frames them
(text and ids) for templates in the styles of ChatML (Qwen), Llama 3 and Gemma and one using
namespaces, loop controls, `tojson` and generation tags; `jaxlm generate --chat` answering as
`transformers` does with an imported instruct model, whose export keeps the template; one-line
errors for templates that refuse a conversation or do not parse."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_interop import (
    ENDOFTEXT,
    GREEDY,
    _hf_llama,
    needs_transformers,
    pydoc_lines,
    torch,
    transformers,
    write_gpt2_tokenizer,
)

from jaxlm.cli import main
from jaxlm.data.chat_template import render_chat
from jaxlm.data.hf_tokenizer import HFTokenizer
from jaxlm.data.tasks import chat_rows
from jaxlm.errors import DataError
from jaxlm.generate import encode_prompt

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_end|>\n\n' + message['content'] | trim }}"
    "{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
STRUCTURED = (
    "{%- set ns = namespace(turns=0) -%}\n"
    "{% for m in messages %}\n"
    "  {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
    "  {% set ns.turns = ns.turns + 1 %}\n"
    "  {% if m['role'] == 'assistant' %}{% generation %}{{ m | tojson }}{% endgeneration %}"
    "{% else %}{{ m['content'] | tojson }}{% endif %}\n"
    "{% endfor %}\n"
    "turns: {{ ns.turns }}{% if add_generation_prompt %} assistant:{% endif %}"
)
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA, "structured": STRUCTURED}
ONE_TURN = [{"role": "user", "content": "What is JAX?"}]
DIALOGUE = [
    {"role": "user", "content": "  Hello there, café <b>owner</b>  "},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is Flax?"},
]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}, *DIALOGUE]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]


def write_chat_tokenizer(directory: Path, template: str, stored: str = "file") -> int:
    """A byte-level BPE with special turn markers and no BOS (Qwen's), the chat template kept
    in chat_template.jinja (`stored` "file"), in tokenizer_config.json ("config") or as its
    "default" among named ones ("named"); returns the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = write_gpt2_tokenizer(directory, legacy=False)
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.save(str(directory / "tokenizer.json"))
    settings = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT}
    if stored == "file":
        (directory / "chat_template.jinja").write_text(template)
    elif stored == "config":
        settings["chat_template"] = template
    else:
        settings["chat_template"] = [
            {"name": "tool_use", "template": "{{ raise_exception('not this one') }}"},
            {"name": "default", "template": template},
        ]
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return tokenizer.get_vocab_size()


def write_instruct_model(directory: Path, template: str, positions: int = 64):
    """A seeded random-init Qwen2 saved by `transformers` with a chat tokenizer; returns it."""
    vocab = write_chat_tokenizer(directory, template)
    torch.manual_seed(3)
    model = _hf_llama(
        "Qwen2", vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=positions
    ).eval()
    model.save_pretrained(directory)
    return model


@needs_transformers
@pytest.mark.parametrize("stored", ["file", "config", "named"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_conversations_render_and_encode_as_transformers_does(name, stored, tmp_path):
    write_chat_tokenizer(tmp_path, TEMPLATES[name], stored)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    tokenizer = HFTokenizer.load(tmp_path)
    conversations = [ONE_TURN, DIALOGUE] + ([] if name == "gemma" else [WITH_SYSTEM])
    for conversation in conversations:
        for opened in (True, False):
            expected = reference.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=opened
            )
            got = render_chat(tokenizer.chat_template, conversation, tokenizer.special, opened)
            assert got == expected
        ids = reference.apply_chat_template(
            conversation, tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert encode_prompt(tokenizer, conversation) == ids


def test_jaxlm_chat_drops_the_oldest_exchanges_that_no_longer_fit(tmp_path, capsys):
    """The system prompt and the latest turns stay; whole exchanges go, oldest first, until the
    conversation leaves the reply its room."""
    from jaxlm.cli.chat import _within

    write_chat_tokenizer(tmp_path, CHATML)
    tokenizer = HFTokenizer.load(tmp_path)
    messages = [*WITH_SYSTEM, {"role": "assistant", "content": "A library."}, ONE_TURN[0]]
    length = [len(encode_prompt(tokenizer, messages[:1] + messages[k:])) for k in (1, 3, 5)]
    assert length[0] > length[1] > length[2]
    assert _within(tokenizer, messages, length[0] + 10, 10) == messages
    assert _within(tokenizer, messages, length[0] + 9, 10) == messages[:1] + messages[3:]
    assert _within(tokenizer, messages, length[1] + 9, 10) == messages[:1] + messages[5:]
    assert _within(tokenizer, messages, 8, 10) == messages[:1] + messages[5:]  # the last turn
    assert "dropped the oldest turns to fit model.max_len=8" in capsys.readouterr().err


def test_conversations_a_template_refuses_are_one_line_errors(tmp_path):
    write_chat_tokenizer(tmp_path, GEMMA)
    tokenizer = HFTokenizer.load(tmp_path)
    cases = [
        (GEMMA, WITH_SYSTEM, "chat template: System role not supported"),
        (GEMMA, [*DIALOGUE, DIALOGUE[-1]], "chat template: Conversation roles must alternate"),
        ("{% for message in messages %}", ONE_TURN, "chat template: Unexpected end of template"),
        (CHATML, [{"content": "no role"}], "a list of messages with a 'role' and a 'content'"),
    ]
    for template, conversation, message in cases:
        with pytest.raises(DataError) as info:
            render_chat(template, conversation, tokenizer.special)
        assert message in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "chat_template.jinja").unlink()
    with pytest.raises(DataError, match="the model's tokenizer has no chat template"):
        encode_prompt(HFTokenizer.load(tmp_path), ONE_TURN)
    assert encode_prompt(tokenizer, "a text") == [tokenizer.bos_id, *tokenizer.encode("a text")]


@needs_transformers
def test_generate_chat_answers_as_transformers_and_the_export_keeps_the_template(
    tmp_path, monkeypatch, capsys
):
    """An imported instruct model answers a user's turn (after a system prompt) with the
    greedy reply of `transformers`' `generate` on `apply_chat_template`'s ids, from Python,
    from `jaxlm generate --chat` and, with a second turn after it, from `jaxlm chat`; the
    export's tokenizer renders the same template."""
    from jaxlm.config import SampleConfig
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    model = write_instruct_model(Path("hf"), CHATML, positions=256)
    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    reference = transformers.AutoTokenizer.from_pretrained("hf")
    conversation = [{"role": "system", "content": "Be brief."}, *ONE_TURN]
    inputs = reference.apply_chat_template(
        conversation, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    expected = reference.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    cfg, params, tokenizer = load_for_inference(Path("run"))
    greedy = SampleConfig(max_new_tokens=6, temperature=0.0)
    assert generate_text(cfg.model, params, tokenizer, [conversation], greedy) == [expected]
    capsys.readouterr()
    flags = ["--chat", "--system=Be brief.", *GREEDY[1:], "--max-new-tokens=6"]
    assert main(["generate", "run", "--prompt=What is JAX?", *flags]) == 0
    assert capsys.readouterr().out == f"{expected}\n"
    assert main(["generate", "run", "--prompt=What is JAX?", "--prompt=Hi", *flags]) == 0
    assert capsys.readouterr().out.startswith(f"> What is JAX?\n{expected}\n> Hi\n")
    assert main(["generate", "run", "--prompt=x", "--system=Be brief."]) == 2
    assert "--system is the system prompt of a conversation: add --chat" in capsys.readouterr().err

    # jaxlm chat: a turn a line, each answered after the turns before it
    follow_up = [*conversation, {"role": "assistant", "content": expected}]
    follow_up.append({"role": "user", "content": "And Flax?"})
    inputs = reference.apply_chat_template(
        follow_up, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    second = reference.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    monkeypatch.setattr("sys.stdin", io.StringIO("What is JAX?\n\nAnd Flax?\n"))
    assert main(["chat", "run", *flags[1:]]) == 0
    assert capsys.readouterr().out == f"{expected}\n{second}\n"

    assert main(["convert", "run", "back", "--to", "hf"]) == 0
    assert Path("back/chat_template.jinja").read_text() == CHATML
    exported = transformers.AutoTokenizer.from_pretrained("back")
    assert exported.apply_chat_template(
        conversation, tokenize=False
    ) == reference.apply_chat_template(conversation, tokenize=False)


# --- training on conversations ------------------------------------------------------------

# ChatML whose generation tags mark each reply and its end of turn, as transformers' assistant
# masks read them.
CHATML_MARKED = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def conversations(count: int) -> list[list[dict[str, str]]]:
    """Real sentences asked back: one or two user turns, each answered."""
    lines = [line for line in pydoc_lines() if 15 < len(line) < 40][: 2 * count]
    result = []
    for i in range(count):
        first, second = lines[2 * i], lines[2 * i + 1]
        turns = [
            {"role": "user", "content": f"Repeat: {first}"},
            {"role": "assistant", "content": first},
        ]
        if i % 2:
            turns = [{"role": "system", "content": "Echo."}, *turns]
            turns += [
                {"role": "user", "content": f"And: {second}"},
                {"role": "assistant", "content": second},
            ]
        result.append(turns)
    return result


@needs_transformers
def test_chat_rows_train_on_the_tokens_transformers_marks_as_the_assistants(tmp_path):
    """Rows of conversations hold the ids of `apply_chat_template` and are trained on its
    assistant mask's tokens (replies and their ends of turn), packed or one a row; turns after
    the last reply are left out, conversations without one skipped."""
    write_chat_tokenizer(tmp_path, CHATML_MARKED)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    tokenizer = HFTokenizer.load(tmp_path)
    chats = conversations(6)
    expected = [
        reference.apply_chat_template(
            chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        for chat in chats
    ]
    trailing = [*chats[1], {"role": "user", "content": "Thanks!"}]
    unanswered = [{"role": "user", "content": "Hello?"}]
    for pack in (False, True):
        rows = chat_rows(
            [*chats[:2], unanswered, trailing, *chats[2:]],
            tokenizer,
            seq_len=256,
            truncate=False,
            pack=pack,
        )
        assert rows.skipped == {"too long": 0, "without a reply": 1}
        got = []
        for index in range(rows.count):
            row = rows.make_row(index, None)
            for segment in range(1, row["segment_ids"].max() + 1):
                at = row["segment_ids"] == segment
                tokens = [*row["inputs"][at], row["targets"][at][-1]]
                got.append((tokens, [0, *row["weights"][at].astype(int)]))
        want = [(e["input_ids"], e["assistant_masks"]) for e in expected]
        assert got == [*want[:2], want[1], *want[2:]]
        assert (rows.count < len(got)) == pack


def test_chat_rows_cut_long_conversations_and_name_templates_they_cannot_use(tmp_path):
    write_chat_tokenizer(tmp_path, CHATML_MARKED)
    tokenizer = HFTokenizer.load(tmp_path)
    chat = conversations(2)[1]  # two replies
    whole = chat_rows([chat], tokenizer, seq_len=256, truncate=False, pack=False).make_row(0, None)
    length = int(whole["segment_ids"].sum())
    first_reply_end = int(np.flatnonzero(whole["weights"])[0]) + 3
    cut = chat_rows([chat], tokenizer, seq_len=first_reply_end, truncate=True, pack=False)
    assert cut.truncated == 1
    np.testing.assert_array_equal(
        cut.make_row(0, None)["weights"], whole["weights"][:first_reply_end]
    )
    with pytest.raises(DataError, match="none of the 1 conversations has a reply within"):
        chat_rows([chat], tokenizer, seq_len=length - 1, truncate=False, pack=False)
    counting = "{{ messages | length }}" + CHATML_MARKED  # earlier turns change with later ones
    tokenizer.chat_template = counting
    with pytest.raises(DataError, match="renders a conversation's earlier turns differently"):
        chat_rows([chat], tokenizer, seq_len=96, truncate=False, pack=False)
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="data.task=chat frames conversations with the tokeniz"):
        chat_rows([chat], tokenizer, seq_len=96, truncate=False, pack=False)


@needs_transformers
def test_fine_tuning_on_conversations_learns_the_replies_and_counts_only_theirs(tmp_path):
    """An instruct model fine-tuned on JSONL conversations (data.task=chat): the held-out loss
    falls (from 6.0 to 4.7 in 16 steps), and its evaluation counts the tokens transformers'
    assistant masks mark."""
    from jaxlm.config import load_config
    from jaxlm.inference import load_for_inference
    from jaxlm.train.trainer import Trainer

    hf = tmp_path / "hf"
    write_instruct_model(hf, CHATML_MARKED, positions=256)
    chats = conversations(48)
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    overrides = [
        f"finetune.init_from={hf}",
        "data.source=jsonl",
        "data.task=chat",
        f"data.train_files=[{jsonl}]",
        "data.eval_examples=8",
        "data.seq_len=255",
        "data.batch_size=8",
        "data.pack_completions=true",
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=2",
        "train.steps=16",
        "train.eval_every=16",
        f"train.workdir={tmp_path / 'run'}",
    ]
    trainer = Trainer(load_config(None, overrides))
    trainer.fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if r["split"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"]
    reference = transformers.AutoTokenizer.from_pretrained(str(hf))
    masks = [
        reference.apply_chat_template(
            chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )["assistant_masks"]
        for chat in chats[-8:]
    ]
    assert evals[-1]["tokens"] == sum(sum(mask) for mask in masks)
    _, _, tokenizer = load_for_inference(tmp_path / "run")  # the run keeps the template
    assert tokenizer.chat_template == CHATML_MARKED


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"messages": "Hello"}', "field 'messages' must hold a list of messages"),
        ('{"messages": []}', "field 'messages' must hold a list of messages"),
        (
            '{"messages": [{"role": "user"}]}',
            "field 'messages' must hold a list of messages, each with a string 'role'",
        ),
        ('{"text": "Hello"}', "no field 'messages' (fields: text)"),
    ],
)
def test_conversations_that_are_not_lists_of_messages_are_named(line, message, tmp_path):
    from jaxlm.config import load_config
    from jaxlm.data.sources import load_splits

    (tmp_path / "chats.jsonl").write_text(line + "\n")
    overrides = ["data.source=jsonl", "data.task=chat", f"data.train_files=[{tmp_path}/*.jsonl]"]
    with pytest.raises(DataError) as info:
        load_splits(load_config(None, overrides).data)
    assert f"chats.jsonl:1: {message}" in str(info.value) and "\n" not in str(info.value)
