"""Tests for studio.templates.

The expected strings are written out by hand from FastChat ``fastchat/conversation.py`` (template
``vicuna_v1.1``: ``SeparatorStyle.ADD_COLON_TWO``, sep ``" "``, sep2 ``"</s>"``, roles ``("USER", "ASSISTANT")``),
whose ``get_prompt`` is::

    seps = [sep, sep2]
    ret = system_message + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"

They are not computed with the code under test.
"""

from __future__ import annotations

import pytest

from studio import templates
from studio.templates import (
    TEMPLATE_NAMES,
    TEMPLATES,
    VICUNA_V11,
    Template,
    chat_template_render,
    get_template,
    render,
    render_with_spans,
    stop_strings,
    with_eos,
)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# --- vicuna_v1.1, default system message -------------------------------------------------------------------


def test_template_values_are_fastchat_vicuna_v11():
    """FastChat fastchat/conversation.py registers vicuna_v1.1 with these values."""
    t = get_template("vicuna_v1.1")
    assert VICUNA_V11 == "vicuna_v1.1"
    assert t.name == "vicuna_v1.1"
    assert t.system_message == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    assert t.roles == ("USER", "ASSISTANT")
    assert t.sep == " "
    assert t.sep2 == "</s>"
    assert t.sep_style == templates.ADD_COLON_TWO
    assert t.stop_str is None
    assert "vicuna_v1.1" in TEMPLATE_NAMES and TEMPLATES["vicuna_v1.1"] is t


def test_one_round_generation_prompt():
    """FastChat: messages [(USER, "Hello!"), (ASSISTANT, None)]."""
    assert render([u("Hello!")]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT:"
    )


def test_one_round_without_generation_prompt():
    """FastChat: messages [(USER, "Hello!")]: the user message is followed by sep " "."""
    assert render([u("Hello!")], add_generation_prompt=False) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! "
    )


def test_one_round_finished():
    """FastChat: messages [(USER, "Hello!"), (ASSISTANT, "Hi there!")]: the answer ends with sep2 "</s>"."""
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi there!</s>"
    )
    assert render([u("Hello!"), a("Hi there!")]) == expected
    # Ending with the assistant, the generation prompt flag changes nothing.
    assert render([u("Hello!"), a("Hi there!")], add_generation_prompt=False) == expected


def test_two_rounds_generation_prompt():
    """FastChat: [(USER, "Hello!"), (ASSISTANT, "Hi there!"), (USER, "How are you?"), (ASSISTANT, None)]."""
    assert render([u("Hello!"), a("Hi there!"), u("How are you?")]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi there!</s>"
        "USER: How are you? ASSISTANT:"
    )


def test_two_rounds_without_generation_prompt():
    assert render([u("Hello!"), a("Hi there!"), u("How are you?")], add_generation_prompt=False) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi there!</s>"
        "USER: How are you? "
    )


def test_two_rounds_finished():
    assert render([u("Hello!"), a("Hi there!"), u("How are you?"), a("Fine, thanks.")]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi there!</s>"
        "USER: How are you? ASSISTANT: Fine, thanks.</s>"
    )


THREE_ROUNDS = [
    u("What is 2+2?"),
    a("2+2 is 4."),
    u("And times 3?"),
    a("4 times 3 is 12."),
    u("Write it in words.\nPlease."),
]


def test_three_rounds_generation_prompt():
    assert render(THREE_ROUNDS) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: What is 2+2? ASSISTANT: 2+2 is 4.</s>"
        "USER: And times 3? ASSISTANT: 4 times 3 is 12.</s>USER: Write it in words.\nPlease. ASSISTANT:"
    )


def test_three_rounds_finished():
    assert render(THREE_ROUNDS + [a("Twelve.")], add_generation_prompt=False) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: What is 2+2? ASSISTANT: 2+2 is 4.</s>"
        "USER: And times 3? ASSISTANT: 4 times 3 is 12.</s>USER: Write it in words.\nPlease. "
        "ASSISTANT: Twelve.</s>"
    )


# --- custom system message -----------------------------------------------------------------------------------


def test_custom_system_message_replaces_default():
    """FastChat: conv.set_system_message("You are a pirate.") then get_prompt()."""
    assert render([s("You are a pirate."), u("Hello!")]) == "You are a pirate. USER: Hello! ASSISTANT:"
    assert (
        render([s("You are a pirate."), u("Hello!")], add_generation_prompt=False)
        == "You are a pirate. USER: Hello! "
    )


def test_custom_system_message_two_rounds():
    assert render([s("Be brief."), u("Hi"), a("Hello."), u("Bye")]) == (
        "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:"
    )


def test_custom_system_message_three_rounds_finished():
    msgs = [s("Be brief."), u("1"), a("one"), u("2"), a("two"), u("3"), a("three")]
    assert render(msgs) == (
        "Be brief. USER: 1 ASSISTANT: one</s>USER: 2 ASSISTANT: two</s>USER: 3 ASSISTANT: three</s>"
    )


def test_empty_system_message_keeps_leading_sep():
    """FastChat writes system_message + sep even when the system message is empty."""
    assert render([s(""), u("Hi")]) == " USER: Hi ASSISTANT:"


def test_last_empty_assistant_message_is_generation_slot():
    """FastChat's (ASSISTANT, None) message renders as "ASSISTANT:" with no trailing space."""
    assert render([s("S."), u("Hi"), a("")], add_generation_prompt=False) == "S. USER: Hi ASSISTANT:"
    assert render([s("S."), u("Hi"), {"role": "assistant", "content": None}]) == "S. USER: Hi ASSISTANT:"


def test_no_messages_is_system_and_sep():
    assert render([s("S.")]) == "S. "
    assert render([]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. "
    )


# --- spans ---------------------------------------------------------------------------------------------------


def test_spans_extract_assistant_text_and_eos_three_rounds():
    text, spans = render_with_spans(THREE_ROUNDS + [a("Twelve.")])
    assert text == render(THREE_ROUNDS + [a("Twelve.")], add_generation_prompt=False)
    assert [text[b:e] for b, e in spans] == ["2+2 is 4.</s>", "4 times 3 is 12.</s>", "Twelve.</s>"]
    # The role prefix is outside the span, the next user turn starts right after it.
    b, e = spans[0]
    assert text[b - len("ASSISTANT: ") : b] == "ASSISTANT: "
    assert text[e:].startswith("USER: And times 3?")
    assert spans == sorted(spans) and spans[-1][1] == len(text)


def test_spans_with_custom_system_and_trailing_user():
    text, spans = render_with_spans([s("Be brief."), u("Hi"), a("Hello."), u("Bye")])
    assert text == "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: Bye "
    assert spans == [(30, 40)]
    assert text[30:40] == "Hello.</s>"


def test_spans_one_round_exact_offsets():
    text, spans = render_with_spans([s("S."), u("Q"), a("A")])
    assert text == "S. USER: Q ASSISTANT: A</s>"
    assert spans == [(22, 27)]


def test_spans_no_assistant():
    assert render_with_spans([u("Q")]) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Q ",
        [],
    )


def test_spans_refuse_empty_assistant():
    with pytest.raises(ValueError, match="message 2"):
        render_with_spans([s("S."), u("Q"), a("")])


def test_spans_other_template():
    text, spans = render_with_spans([u("Hi"), a("Yo")], "zero_shot")
    assert [text[b:e] for b, e in spans] == ["Yo\n### "]


# --- other templates -------------------------------------------------------------------------------------------


def test_alpaca_template():
    """FastChat alpaca: ADD_COLON_TWO, roles ("### Instruction", "### Response"), sep "\\n\\n", sep2 "</s>"."""
    assert render([u("Say hi."), a("Hi."), u("Again.")], "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction: Say hi.\n\n### Response: Hi.</s>### Instruction: Again.\n\n### Response:"
    )


def test_zero_shot_single_separator():
    """FastChat zero_shot: ADD_COLON_SINGLE, sep "\\n### "."""
    assert render([s("S"), u("Hi"), a("Yo"), u("More")], "zero_shot") == (
        "S\n### Human: Hi\n### Assistant: Yo\n### Human: More\n### Assistant:"
    )


def test_template_object_accepted():
    t = Template(name="custom", system_message="Sys", roles=("Q", "A"), sep="|", sep2="<end>")
    assert render([u("x"), a("y"), u("z")], t) == "Sys|Q: x|A: y<end>Q: z|A:"


# --- errors --------------------------------------------------------------------------------------------------


def test_unknown_template_names_known_ones():
    with pytest.raises(ValueError) as err:
        get_template("vicuna_v9")
    msg = str(err.value)
    assert "vicuna_v9" in msg and "vicuna_v1.1" in msg
    with pytest.raises(ValueError, match="vicuna_v1.1"):
        render([u("x")], "nope")
    with pytest.raises(ValueError, match="known templates"):
        stop_strings("nope")


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([a("x")], "message 0: expected a 'user'"),
        ([u("x"), u("y")], "message 1: expected a 'assistant'"),
        ([u("x"), s("y")], "system message may only come first"),
        ([{"role": "human", "content": "x"}], "role must be"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([u("")], "content is empty"),
        ([u("x"), a(""), u("y")], "message 1 \\(assistant\\): content is empty"),
        (["hello"], "expected a dict"),
    ],
)
def test_bad_messages(messages, fragment):
    with pytest.raises(ValueError, match=fragment):
        render(messages)


def test_register_duplicate_refused():
    with pytest.raises(ValueError, match="already registered"):
        templates.register_template(get_template(VICUNA_V11))


# --- stop strings --------------------------------------------------------------------------------------------


def test_stop_strings():
    assert stop_strings("vicuna_v1.1") == ["</s>", "USER:"]
    assert stop_strings("zero_shot") == ["###", "Human:"]
    assert stop_strings("vicuna_v1.1", "</s>") == ["</s>", "USER:"]
    # a non-Llama EOS: the separator as rendered, and FastChat's literal "</s>" as a fallback
    assert stop_strings("vicuna_v1.1", "<|im_end|>") == ["<|im_end|>", "</s>", "USER:"]
    assert stop_strings("zero_shot", "<|im_end|>") == ["###", "Human:"]


# --- the separator after an answer is the tokenizer's EOS token -------------------------------------------------


def test_with_eos_replaces_fastchat_eos_only_for_other_tokenizers():
    vicuna = get_template(VICUNA_V11)
    assert templates.LLAMA_EOS == "</s>"
    assert with_eos(VICUNA_V11, None) is vicuna and with_eos(VICUNA_V11, "</s>") is vicuna
    smol = with_eos(VICUNA_V11, "<|im_end|>")
    assert smol.sep2 == "<|im_end|>" and smol.sep == " " and smol.roles == vicuna.roles
    assert smol.system_message == vicuna.system_message and get_template(VICUNA_V11).sep2 == "</s>"
    assert with_eos("alpaca", "<|eot_id|>").sep2 == "<|eot_id|>"
    assert with_eos("zero_shot", "<|im_end|>") is get_template("zero_shot")  # no "</s>" separator to replace
    custom = Template(name="custom", system_message="Sys", roles=("Q", "A"), sep="|", sep2="<end>")
    assert with_eos(custom, "<|im_end|>") is custom
    for bad in ("", 2):
        with pytest.raises(ValueError, match="eos_token must be"):
            with_eos(VICUNA_V11, bad)


def test_render_with_eos_token():
    msgs = [s("S."), u("Q"), a("A"), u("Q2")]
    assert render(msgs, eos_token="<|im_end|>") == "S. USER: Q ASSISTANT: A<|im_end|>USER: Q2 ASSISTANT:"
    assert render(msgs, eos_token="</s>") == render(msgs) == "S. USER: Q ASSISTANT: A</s>USER: Q2 ASSISTANT:"
    text, spans = render_with_spans([s("S."), u("Q"), a("A"), u("Q2"), a("B")], eos_token="<|im_end|>")
    assert text == "S. USER: Q ASSISTANT: A<|im_end|>USER: Q2 ASSISTANT: B<|im_end|>"
    assert [text[b:e] for b, e in spans] == ["A<|im_end|>", "B<|im_end|>"]


# --- tokenizer chat templates ----------------------------------------------------------------------------------


def _word_tokenizer(chat_template=None):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def test_chat_template_render_real_tokenizer():
    tmpl = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tok = _word_tokenizer(tmpl)
    msgs = [s("S"), u("Hi")]
    assert chat_template_render(tok, msgs) == "<|system|>S</s><|user|>Hi</s><|assistant|>"
    assert chat_template_render(tok, msgs, add_generation_prompt=False) == "<|system|>S</s><|user|>Hi</s>"


def test_chat_template_render_without_template_is_clear():
    tok = _word_tokenizer()
    with pytest.raises(ValueError, match="has no chat template"):
        chat_template_render(tok, [u("Hi")])
