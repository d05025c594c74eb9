"""Chat templates: conversations framed as `transformers`' `apply_chat_template` frames them
(text and ids) for templates in the styles of ChatML (Qwen), Llama 3 and Gemma and one using
namespaces, loop controls, `tojson` and generation tags; `jaxlm generate --chat` answering as
`transformers` does with an imported instruct model, whose export keeps the template; one-line
errors for templates that refuse a conversation or do not parse."""

import json
from pathlib import Path

import pytest
from test_interop import (
    ENDOFTEXT,
    GREEDY,
    _hf_llama,
    needs_transformers,
    torch,
    transformers,
    write_gpt2_tokenizer,
)

from jaxlm.cli import main
from jaxlm.data.chat_template import render_chat
from jaxlm.data.hf_tokenizer import HFTokenizer
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
    greedy reply of `transformers`' `generate` on `apply_chat_template`'s ids, from Python and
    from `jaxlm generate --chat`; the export's tokenizer renders the same template."""
    from jaxlm.config import SampleConfig
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    vocab = write_chat_tokenizer(Path("hf"), CHATML)
    torch.manual_seed(3)
    model = _hf_llama("Qwen2", vocab_size=vocab, tie_word_embeddings=True).eval()
    model.save_pretrained("hf")
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

    assert main(["convert", "run", "back", "--to", "hf"]) == 0
    assert Path("back/chat_template.jinja").read_text() == CHATML
    exported = transformers.AutoTokenizer.from_pretrained("back")
    assert exported.apply_chat_template(
        conversation, tokenize=False
    ) == reference.apply_chat_template(conversation, tokenize=False)
