"""Training data: assistant-only labels for every reference conversation, cuts at whole rounds, collators.

The masking test decodes the kept label tokens of every conversation derived from ``../shared/data`` and compares
them with the assistant texts plus their end-of-turn markers, for:

- the default tokenizer (SmolLM2, byte-level BPE) with the ``vicuna_v1.1`` template (each answer closed by its EOS
  token ``<|im_end|>`` in place of FastChat's ``</s>``, which is no token of it) and with its own ChatML chat
  template;
- a sentencepiece Llama-style tokenizer, trained here offline on the reference texts (``sentencepiece`` BPE with
  byte fallback, no normalisation, a dummy prefix, as Llama's) and wrapped in ``transformers.LlamaTokenizer``,
  with ``vicuna_v1.1`` (where ``</s>`` is the EOS token, as FastChat trains Vicuna) and with a Zephyr chat template
  (``<|assistant|>`` ... ``</s>``).

Normalisation: only one leading space or newline of a decoded assistant message is dropped. The separator
between the assistant header and the answer (the space after ``ASSISTANT:``, the newline after
``<|assistant|>``) is rendered by the template, outside the assistant span, but a tokenizer may fold it into the
answer's first token (``" Hello"``, ``"▁Hello"``, ``"\n```"``), which is then a label, as it must be: the model
has to predict that token. The byte-level decoder keeps such a leading space, the sentencepiece decoder strips a
leading space but keeps a newline. Everything else must match exactly.
"""

from __future__ import annotations

import io
import json

import pytest

from training.data import (
    IGNORE_INDEX,
    DataError,
    PadCollator,
    build_dataset,
    conversation_spans,
    load_conversations,
    packed_collator,
    packing_support,
    tokenize_conversation,
)

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# Made-up answers: markdown, code, numbers, unicode, newlines, spacing that tokenizers like to merge.
ANSWERS = [
    "Sure! Here is a short answer.",
    "1. First, preheat the oven to 180°C.\n2. Then mix: flour, eggs & milk.\n\n**Done.**",
    "```python\ndef f(x):\n    return x ** 2  # square\n```\nThat's it.",
    "The result is 42 (forty-two); see §3.1 — also: naïve café, 日本語, emoji 🙂.",
    "No.",
    "Well...  it depends:\n\t- a\n\t- b",
    "\"Quoted\" text, 'single' quotes, and a trailing period.",
    "x + y = z, so x - y = z - 2y.",
]
FOLLOW_UPS = [
    "Can you explain that in more detail?",
    "What about the opposite case?",
    "Give me an example with numbers.",
    "Summarise it in one sentence.",
]


def _conversations(data_dir) -> list[tuple[str, list[dict]]]:
    convs: list[tuple[str, list[dict]]] = []
    for i, r in enumerate(json.loads((data_dir / "alpaca_en_demo.json").read_text())):
        user = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        convs.append((f"alpaca-{i}", [{"role": "user", "content": user},
                                      {"role": "assistant", "content": r["output"]}]))
    for line in (data_dir / "mt_bench_questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        msgs = []
        for k, turn in enumerate(q["turns"]):
            msgs += [{"role": "user", "content": turn},
                     {"role": "assistant", "content": ANSWERS[(q["question_id"] + k) % len(ANSWERS)]}]
        convs.append((f"mt-{q['question_id']}", msgs))
    for line in (data_dir / "wizardlm_testset.jsonl").read_text().splitlines():
        q = json.loads(line)
        convs.append((f"wiz-{q['idx']}", [{"role": "user", "content": q["Instruction"]},
                                          {"role": "assistant", "content": ANSWERS[q["idx"] % len(ANSWERS)]}]))
    alpaca = json.loads((data_dir / "alpaca_en_demo.json").read_text())
    for i in range(24):  # crafted 3-5 round conversations with a system message
        msgs = [{"role": "system", "content": f"You are assistant number {i}. Answer carefully."}]
        for k in range(3 + i % 3):
            user = alpaca[i * 7 + k]["instruction"] if k == 0 else FOLLOW_UPS[(i + k) % len(FOLLOW_UPS)]
            answer = alpaca[i * 7 + k]["output"] if k % 2 == 0 else ANSWERS[(i + k) % len(ANSWERS)]
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        convs.append((f"crafted-{i}", msgs))
    return convs


@pytest.fixture(scope="session")
def conversations(data_dir):
    return _conversations(data_dir)


@pytest.fixture(scope="session")
def default_tok(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def llama_tok(data_dir):
    """A Llama-style sentencepiece tokenizer trained offline on the reference texts (about 2 s)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    texts = [c["content"] for _, msgs in _conversations(data_dir) for c in msgs]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=3000, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=0.9995, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    # What transformers' SentencePieceExtractor does for BPE models (it needs protobuf, which is not installed):
    # the vocabulary in piece order, merges generated from it.
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, skip_tokens={"<unk>", "<s>", "</s>"})
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, legacy=False)
    tok.chat_template = ZEPHYR_TEMPLATE
    assert tok.is_fast and tok("hi")["input_ids"][0] == tok.bos_token_id
    return tok


def _runs(labels: list[int]) -> list[list[int]]:
    runs, cur = [], []
    for x in labels:
        if x == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(x)
    if cur:
        runs.append(cur)
    return runs


def _check_all(convs, tok, template: str, marker: str):
    samples, stats = build_dataset(convs, tok, template, max_length=1_000_000)
    assert stats.kept == len(convs) and stats.dropped_invalid == 0 and stats.dropped_no_labels == 0, stats.errors
    assert stats.cut_at_round == stats.cut_inside_round == 0
    by_id = dict(convs)
    mismatches = []
    for s in samples:
        assert len(s["input_ids"]) == len(s["labels"]) == s["length"]
        for i, x in zip(s["input_ids"], s["labels"]):
            assert x in (IGNORE_INDEX, i)
        answers = [m["content"] + marker for m in by_id[s["id"]] if m["role"] == "assistant"]
        runs = _runs(s["labels"])
        got = [tok.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in runs]
        got = [g[1:] if g[:1] in (" ", "\n") and not a.startswith(g[:1]) else g for g, a in zip(got, answers)]
        if got != answers:
            mismatches.append((s["id"], got, answers))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"
    return samples


def test_conversations_cover_the_reference_data(conversations):
    ids = [c for c, _ in conversations]
    assert sum(c.startswith("alpaca-") for c in ids) == 999
    assert sum(c.startswith("mt-") for c in ids) == 80
    assert sum(c.startswith("wiz-") for c in ids) == 218
    assert all(4 <= len(m) - 1 <= 10 for c, m in conversations if c.startswith("crafted-"))


def test_labels_default_tokenizer_vicuna(conversations, default_tok):
    # "</s>" is not a token of the default tokenizer, so vicuna_v1.1 closes each answer with its EOS instead
    assert "</s>" not in default_tok.all_special_tokens and default_tok.eos_token == "<|im_end|>"
    _check_all(conversations, default_tok, "vicuna_v1.1", "<|im_end|>")


def test_labels_default_tokenizer_chat_template(conversations, default_tok):
    samples = _check_all(conversations, default_tok, "chat_template", "<|im_end|>")
    im_end = default_tok.convert_tokens_to_ids("<|im_end|>")
    # every assistant run ends with the end-of-turn token; the "\n" after it and the next header are masked
    for s in samples[:50]:
        assert all(r[-1] == im_end for r in _runs(s["labels"]))


def test_labels_sentencepiece_llama_vicuna(conversations, llama_tok):
    samples = _check_all(conversations, llama_tok, "vicuna_v1.1", "</s>")
    for s in samples[:50]:  # "</s>" is Llama's EOS token, so every assistant run ends with it (as in FastChat)
        assert all(r[-1] == llama_tok.eos_token_id for r in _runs(s["labels"]))
        assert s["input_ids"][0] == llama_tok.bos_token_id and s["labels"][0] == IGNORE_INDEX


def test_labels_sentencepiece_llama_chat_template(conversations, llama_tok):
    _check_all(conversations, llama_tok, "chat_template", "</s>")


@pytest.mark.parametrize("tok_name", ["default_tok", "llama_tok"])
def test_vicuna_every_answer_ends_with_the_eos_label(request, conversations, tok_name):
    """With vicuna_v1.1 the last label of each assistant answer is the tokenizer's EOS id, whatever its EOS
    string: SmolLM2's "<|im_end|>" is rendered in place of FastChat's "</s>", Llama's "</s>" is kept as written."""
    tok = request.getfixturevalue(tok_name)
    eos = tok.eos_token_id
    samples, stats = build_dataset(conversations, tok, "vicuna_v1.1", max_length=1_000_000)
    assert stats.kept == len(conversations)
    by_id = dict(conversations)
    for s in samples:
        n_answers = sum(m["role"] == "assistant" for m in by_id[s["id"]])
        ends = [k for k, x in enumerate(s["labels"]) if x != IGNORE_INDEX
                and (k + 1 == len(s["labels"]) or s["labels"][k + 1] == IGNORE_INDEX)]
        assert len(ends) == n_answers and all(s["labels"][k] == s["input_ids"][k] == eos for k in ends), s["id"]
        # the EOS id carries loss only at the end of answers
        assert sum(x == eos for x in s["labels"]) == n_answers
    text, spans, _ = conversation_spans(MULTI, "vicuna_v1.1", tok)
    if tok_name == "llama_tok":  # FastChat's text exactly: "</s>" is Llama's EOS token
        assert tok.eos_token == "</s>"
        assert text == conversation_spans(MULTI, "vicuna_v1.1")[0]
        assert text.count("</s>") == 3 and "Second answer.</s>USER: Third question?" in text
    else:
        assert "</s>" not in text and text.count("<|im_end|>") == 3
        assert "Second answer.<|im_end|>USER: Third question?" in text
    assert all(text[b:e].endswith(tok.eos_token) for b, e in spans)


TOOL_CALL = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]}
TOOL_RESULT = {"role": "tool", "tool_call_id": "c1", "content": "18 °C, sunny"}


@pytest.mark.parametrize("template", ["vicuna_v1.1", "chat_template"])
def test_tool_conversations_are_left_out_and_counted(default_tok, template):
    weather = [{"role": "user", "content": "Weather in Paris?"}, TOOL_CALL, TOOL_RESULT,
               {"role": "assistant", "content": "It is 18 °C and sunny."}]
    only_result = MULTI[:3] + [{"role": "tool", "content": "x"}] + MULTI[3:]
    rows = [("plain", MULTI), ("weather", weather), ("result", only_result), ("short", MULTI[1:3])]
    samples, stats = build_dataset(rows, default_tok, template, 2048)
    assert [s["id"] for s in samples] == ["plain", "short"]
    assert stats.dropped_tool_turns == 2 and stats.kept == 2 and stats.dropped_invalid == 0
    assert stats.conversations == 4 and stats.as_dict()["dropped_tool_turns"] == 2
    assert stats.errors[0].startswith("weather: has tool turns") and stats.errors[1].startswith("result: ")
    # an empty tool_calls list is no tool turn
    quiet = [MULTI[1], {**MULTI[2], "tool_calls": []}]
    assert build_dataset([("q", quiet)], default_tok, template, 2048)[1].dropped_tool_turns == 0


MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "First question?"},
    {"role": "assistant", "content": "First answer, which is a little longer than the others."},
    {"role": "user", "content": "Second question?"},
    {"role": "assistant", "content": "Second answer."},
    {"role": "user", "content": "Third question?"},
    {"role": "assistant", "content": "Third answer."},
]


@pytest.mark.parametrize("template,marker", [("vicuna_v1.1", "<|im_end|>"), ("chat_template", "<|im_end|>")])
def test_over_long_conversation_is_cut_at_whole_rounds(default_tok, template, marker):
    full, status = tokenize_conversation(MULTI, default_tok, template, 10_000)
    assert status == "ok"
    n = len(full["input_ids"])
    text, spans, _ = conversation_spans(MULTI, template, default_tok)
    two_rounds = default_tok(text[: spans[1][1]], add_special_tokens=template != "chat_template")["input_ids"]
    for limit in (len(two_rounds), n - 1):  # room for exactly two rounds, or one token short of three
        cut, status = tokenize_conversation(MULTI, default_tok, template, limit)
        assert status == "cut_at_round"
        assert cut["input_ids"] == full["input_ids"][: len(two_rounds)]  # a prefix: the same tokens, cut
        got = [default_tok.decode(r).lstrip() for r in _runs(cut["labels"])]
        assert got == ["First answer, which is a little longer than the others." + marker, "Second answer." + marker]


def test_first_round_too_long_is_truncated_then_dropped(default_tok):
    conv = [{"role": "system", "content": "Answer every question briefly and politely. " * 4}] + MULTI[1:]
    text, spans, _ = conversation_spans(conv, "vicuna_v1.1")
    # tokens before the answer (the space before it belongs to the answer's first token, " First")
    prompt = len(default_tok(text[: spans[0][0] - 1])["input_ids"])
    cut, status = tokenize_conversation(conv, default_tok, "vicuna_v1.1", prompt + 3)
    assert status == "cut_inside_round" and len(cut["input_ids"]) == prompt + 3
    assert default_tok.decode(_runs(cut["labels"])[0]).strip() == "First answer,"
    none, status = tokenize_conversation(conv, default_tok, "vicuna_v1.1", prompt - 2)
    assert none is None and status == "no_labels"
    short = [{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Yo"}]
    assert len(tokenize_conversation(short, default_tok, "vicuna_v1.1", 100)[0]["input_ids"]) <= prompt - 2
    samples, stats = build_dataset([("a", conv), ("b", short), ("c", conv[:2])], default_tok,
                                   "vicuna_v1.1", prompt - 2)
    assert stats.kept == 1 and stats.dropped_no_labels == 2 and [s["id"] for s in samples] == ["b"]
    assert stats.errors == [f"a: no assistant token left within max_length={prompt - 2}", "c: no assistant message"]


def test_bad_conversations_are_dropped_with_reasons(default_tok):
    bad = [("x", [{"role": "assistant", "content": "hi"}]),
           ("y", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])]
    samples, stats = build_dataset(bad + [("ok", MULTI)], default_tok, "vicuna_v1.1", 2048)
    assert [s["id"] for s in samples] == ["ok"] and stats.dropped_invalid == 2
    assert stats.errors[0].startswith("x: message 0") and stats.errors[1].startswith("y: message 1")


def test_chat_template_that_is_not_prefix_stable_is_refused(default_tok):
    import copy

    tok = copy.deepcopy(default_tok)
    # renders only the last two messages: earlier turns vanish when the conversation grows
    tok.chat_template = ("{% for m in messages[-2:] %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ValueError, match="not prefix-stable"):
        conversation_spans(MULTI, "chat_template", tok)


def test_load_conversations_names_file_and_line(tmp_path):
    p = tmp_path / "snapshot.jsonl"
    p.write_text(json.dumps({"id": "a", "messages": MULTI}) + "\n\n{broken\n")
    with pytest.raises(DataError, match=r"snapshot.jsonl, line 3: not valid JSON"):
        load_conversations(p)
    p.write_text(json.dumps({"id": "a", "messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: message 0 needs string 'role' and 'content'"):
        load_conversations(p)
    p.write_text(json.dumps({"id": "a", "messages": MULTI}) + "\n")
    assert load_conversations(p) == [("a", MULTI)]


def test_load_conversations_keeps_tool_turns(tmp_path):
    """Tool turns are read as they are (an assistant tool call has no string content) for build_dataset to
    count; other messages keep only role and content."""
    p = tmp_path / "snapshot.jsonl"
    msgs = [{"role": "user", "content": "Weather in Paris?", "extra": 1}, TOOL_CALL, TOOL_RESULT]
    p.write_text(json.dumps({"id": "t", "messages": msgs}) + "\n")
    (cid, got), = load_conversations(p)
    assert cid == "t" and got == [{"role": "user", "content": "Weather in Paris?"}, TOOL_CALL, TOOL_RESULT]
    p.write_text(json.dumps({"id": "t", "messages": [{"role": "assistant", "content": None}]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: message 0 needs string 'role' and 'content'"):
        load_conversations(p)


def _features(lengths):
    return [{"input_ids": list(range(10, 10 + n)), "labels": [IGNORE_INDEX] * 2 + list(range(12, 10 + n)),
             "length": n, "id": str(i)} for i, n in enumerate(lengths)]


def test_pad_collator_pads_only_to_the_longest():
    batch = PadCollator(pad_token_id=0)(_features([5, 9, 7]))
    assert batch["input_ids"].shape == (3, 9) and batch["labels"].shape == (3, 9)
    assert batch["attention_mask"].sum(1).tolist() == [5, 9, 7]
    assert batch["labels"][0, 5:].tolist() == [IGNORE_INDEX] * 4 and batch["input_ids"][0, 5:].tolist() == [0] * 4
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 2 + list(range(12, 19))
    assert PadCollator(0, pad_to_multiple_of=8)(_features([5, 9]))["input_ids"].shape == (2, 16)
    # FastChat's way, for comparison only: every batch padded to max_length
    assert PadCollator(0, pad_to="max_length", max_length=32)(_features([5, 9]))["input_ids"].shape == (2, 32)


def test_packed_collator_restarts_positions_per_sequence():
    batch = packed_collator()(_features([5, 9, 7]))
    assert batch["input_ids"].shape == (1, 21) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(5)) + list(range(9)) + list(range(7))
    labels = batch["labels"][0].tolist()
    assert labels[0] == labels[5] == labels[14] == IGNORE_INDEX  # no loss across a sequence boundary


def test_packed_batch_equals_separate_sequences():
    """Packing must not let a sequence attend to the one before it: the logits of a packed row equal those of
    each sequence run alone (tiny random Llama, sdpa)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, use_cache=False)).eval()
    assert packing_support(model) == (True, "sdpa")
    feats = [{"input_ids": torch.randint(3, 64, (n,)).tolist(), "labels": [1] * n} for n in (6, 11, 4)]
    batch = packed_collator()(feats)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in feats])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
