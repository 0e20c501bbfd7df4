"""Tests for studio/quality.py: each filter on crafted positives and negatives, the registry, FastChat-style
splitting of long conversations with the default model's tokenizer, and duplicate detection at scale."""

from __future__ import annotations

import random
import time

import pytest

from studio import quality
from studio.quality import FILTERS, run_filter, split_long_conversation


def conv(*turns: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def ids(flags) -> list:
    return [cid for cid, _ in flags]


# ---------------------------------------------------------------------------------------------- duplicates


def test_exact_duplicates_keep_the_first():
    convs = [
        (1, conv("What is the capital of France?", "Paris.")),
        (2, conv("what is the   capital of france", "It is Paris.")),  # case, spaces, final "?"
        (3, conv("What is the capital of Spain?", "Madrid.")),
        (4, conv("What is the capital of France?!", "Paris!")),
        (5, conv("What is 1+1?", "2")),
        (6, conv("What is 1-1?", "0")),  # punctuation inside the text matters
    ]
    flags = quality.exact_duplicates(convs)
    assert ids(flags) == [2, 4]
    assert all("conversation 1" in r for _, r in flags)
    # same first turn but different answers: not duplicates when the whole text is compared
    assert quality.exact_duplicates(convs, scope="conversation") == []
    assert ids(quality.exact_duplicates(convs + [(7, conv("What is 1+1?", "2"))], scope="conversation")) == [7]


def test_exact_duplicates_ignore_conversations_without_user_turn():
    convs = [(1, conv(system="s")), (2, conv(system="s")), (3, conv("hi", "hello"))]
    assert quality.exact_duplicates(convs) == []
    with pytest.raises(ValueError, match="unknown scope"):
        quality.exact_duplicates(convs, scope="nope")


NEAR = [
    ("a", "Write a short poem about the sea at night, with rhymes and a hopeful ending."),
    ("b", "Write a short poem about the sea at night, with rhymes and a happy ending."),  # one word changed
    ("c", "Explain how photosynthesis works in plants, step by step, for a ten year old."),
    ("d", "Write a short poem about the sea at night."),  # shorter version of a
    ("e", "Explain how photosynthesis works in plants, step by step, for a ten-year-old!"),
]


def test_near_duplicates_threshold():
    convs = [(cid, conv(text, "ok")) for cid, text in NEAR]
    sims = {cid: quality.jaccard(quality.shingles(NEAR[0][1]), quality.shingles(t)) for cid, t in NEAR}
    assert sims["b"] > 0.75 and 0.4 < sims["d"] < 0.7 and sims["c"] < 0.1
    flags = dict(quality.near_duplicates(convs, threshold=0.75))
    assert set(flags) == {"b", "e"}
    assert "near duplicate of conversation a" in flags["b"] and "conversation c" in flags["e"]
    # a lower threshold also catches the shortened version; 1.0 only exact copies (none here)
    assert set(dict(quality.near_duplicates(convs, threshold=0.4))) == {"b", "d", "e"}
    assert quality.near_duplicates(convs, threshold=1.0) == []
    assert ids(quality.near_duplicates(convs + [("f", conv(NEAR[2][1], "x"))], threshold=1.0)) == ["f"]


def test_near_duplicates_word_shingles_and_bad_params():
    long_a = " ".join(f"word{i}" for i in range(200))
    long_b = long_a.replace("word100", "changed")
    convs = [(1, conv("q", long_a)), (2, conv("q", long_b)), (3, conv("q", "something else entirely"))]
    assert ids(quality.near_duplicates(convs, scope="conversation", unit="word", ngram=3)) == [2]
    with pytest.raises(ValueError, match="threshold"):
        quality.near_duplicates(convs, threshold=0)
    with pytest.raises(ValueError, match="unit"):
        quality.near_duplicates(convs, unit="byte")


def test_minhash_signatures_estimate_jaccard_and_lsh_params():
    import numpy as np

    a = np.arange(0, 1000, dtype=np.uint32)
    b = np.arange(500, 1500, dtype=np.uint32)  # Jaccard 500 / 1500 = 1/3
    sig = quality.minhash_signatures([a, b, a, np.empty(0, np.uint32)], num_perm=256, chunk=700)
    assert sig.shape == (4, 256) and sig.dtype == np.uint32
    assert (sig[0] == sig[2]).all() and (sig[3] == np.iinfo(np.uint32).max).all()
    assert abs((sig[0] == sig[1]).mean() - 1 / 3) < 0.1
    assert quality.jaccard(a, b) == pytest.approx(1 / 3) and quality.jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    for t in (0.5, 0.8, 0.95):
        bands, rows = quality.lsh_params(t, 128)
        assert bands * rows <= 128 and 1 - (1 - t ** rows) ** bands >= 0.99


def test_duplicates_at_scale_are_fast():
    """20,000 synthetic conversations: exact + near duplicate detection in a few seconds (time printed)."""
    rng = random.Random(0)
    words = ("the of and to in is you that it he was for on are as with his they at be this have from or "
             "one had by word but not what all were we when your can said there use an each which she do how "
             "their if will up other about out many then them these so some her would make like him into "
             "time has look two more write go see number no way could people my than first water been call "
             "who oil its now find long down day did get come made may part").split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 60))) for _ in range(19_000)]
    base = list(texts)
    for k in range(1000):  # 500 exact copies and 500 one-word edits of earlier texts
        t = base[rng.randrange(len(base))]
        if k % 2:
            w = t.split()
            w[len(w) // 2] = "zebra"
            t = " ".join(w)
        texts.append(t)
    convs = [(i, conv(t, "answer")) for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    exact = quality.exact_duplicates(convs)
    t1 = time.perf_counter()
    near = quality.near_duplicates(convs, threshold=0.8)
    t2 = time.perf_counter()
    print(f"\n20,000 conversations: exact duplicates {t1 - t0:.2f} s ({len(exact)} flagged), "
          f"near duplicates {t2 - t1:.2f} s ({len(near)} flagged)")
    assert len(exact) >= 500
    assert len(near) >= len(exact) + 400  # most one-word edits of >= 8-word texts are >= 0.8 similar
    assert set(ids(exact)) <= set(ids(near))


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("answer", [
    "As an AI language model, I don't have opinions.",
    "I'm sorry, but I cannot help with that request.",
    "I\u2019m sorry, but I cannot do that.",  # curly apostrophe
    "I cannot fulfill this request.",
    "This model was trained by OpenAI.",
    "It is not appropriate to joke about that.",
    "As an AI, I have no body.",
])
def test_refusals_positive(answer):
    flags = quality.refusals([(1, conv("Tell me a joke", answer))])
    assert ids(flags) == [1] and flags[0][1].startswith("assistant turn 2:")


@pytest.mark.parametrize("answer", [
    "Sure! Here is a joke: why did the chicken cross the road?",
    "I'm sorry to hear that your cat is ill; here is what you can do.",
    "The AI revolution started with language models like GPT.",
    "A large language model predicts the next token.",
    "Use tools such as an AI assistant or a spell checker.",
])
def test_refusals_negative(answer):
    assert quality.refusals([(1, conv("Tell me something", answer))]) == []


def test_refusals_roles_and_extra_phrases():
    c = [(1, conv("As an AI language model, answer me", "Sure, here it is.")),
         (2, conv("hello", "Hello! Banana time.", "more", "As a language model I must say..."))]
    assert ids(quality.refusals(c)) == [2]
    assert "assistant turn 4" in quality.refusals(c)[0][1]
    assert ids(quality.refusals(c, roles="user")) == [1]
    assert ids(quality.refusals(c, roles="all")) == [1, 2]
    assert ids(quality.refusals([(3, conv("x", "Banana time"))], extra_phrases="banana TIME\nother")) == [3]


# ---------------------------------------------------------------------------------------------- wrong format


def test_wrong_format_lists():
    mangled = "Here are the steps:\n1. Preheat the oven.\n1. Mix the flour.\n1. Bake for an hour."
    good = "Here are the steps:\n1. Preheat the oven.\n2. Mix the flour.\n3. Bake for an hour."
    starts_mangled = "1. Preheat the oven.\n1. Mix the flour."
    two_lists = "First list:\n1. a\n2. b\n\nSecond list:\n1. c\n2. d"
    convs = [(1, conv("How?", mangled)), (2, conv("How?", good)), (3, conv("How?", starts_mangled)),
             (4, conv("How?", two_lists)), (5, conv("Version 1.1 is out\n1.5 too", "ok"))]
    flags = quality.wrong_format(convs)
    assert ids(flags) == [1, 3]
    assert "assistant turn 2" in flags[0][1]


# ---------------------------------------------------------------------------------------------- lengths


def test_turn_length_chars():
    convs = [(1, conv("Hi there", "k")), (2, conv("Hi there", "Hello, how can I help?")),
             (3, conv("x" * 50, "Fine answer")), (4, conv("", "Fine answer"))]
    flags = dict(quality.turn_length(convs, min_len=2, max_len=40))
    assert set(flags) == {1, 3, 4}
    assert flags[1] == "assistant turn 2 is 1 chars (shorter than 2)"
    assert flags[3] == "user turn 1 is 50 chars (longer than 40)"
    assert set(dict(quality.turn_length(convs, min_len=2, max_len=40, roles="assistant"))) == {1}
    assert quality.turn_length(convs, min_len=0, max_len=0) == []


def test_turn_length_tokens_needs_a_tokenizer():
    convs = [(1, conv("one two three four", "five"))]
    with pytest.raises(ValueError, match="tokenizer"):
        quality.turn_length(convs, unit="tokens")
    words = lambda t: len(t.split())  # noqa: E731 - a callable tokenizer counts words here
    assert dict(quality.turn_length(convs, min_len=2, max_len=3, unit="tokens", tokenizer=words)) == {
        1: "user turn 1 is 4 tokens (longer than 3)"}


# ---------------------------------------------------------------------------------------------- language


def test_language_filter():
    pytest.importorskip("py3langid", reason="the language filter needs py3langid (a project dependency)")
    convs = [
        (1, conv("How do I sort a list in Python in descending order?", "Use sorted(x, reverse=True).")),
        (2, conv("Wie spät ist es? Ich möchte heute Abend ins Kino gehen.", "Es ist acht Uhr, viel Spaß!")),
        (3, conv("¿Cuál es la capital de Francia y cuántos habitantes tiene?", "La capital es París.")),
        (4, conv("ok", "oui")),  # too short to judge
        (5, conv("Explain this code please, what does it do?", "```python\ndef f(x):\n    return x\n```\n"
                 "It returns its argument unchanged.")),
    ]
    flags = dict(quality.language(convs, languages="en"))
    assert set(flags) == {2, 3}
    assert flags[2].startswith("language de")
    assert set(dict(quality.language(convs, languages="en, de"))) == {3}
    with pytest.raises(ValueError, match="language"):
        quality.language(convs, languages=" ")


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_explained_filters_and_runs_them():
    for name, f in FILTERS.items():
        assert f.name == name and f.title and len(f.explanation) > 60 and f.source
        assert f.fn.__doc__ and len(f.fn.__doc__) > 100
        assert all(p.help for p in f.params)
    assert FILTERS["long_conversations"].needs_tokenizer and not FILTERS["refusals"].needs_tokenizer
    convs = [(1, conv("Q?", "As an AI language model, no.")), (2, conv("Q?", "Yes."))]
    assert ids(run_filter("refusals", convs)) == [1]
    assert ids(run_filter("exact_duplicates", convs)) == [2]
    assert ids(run_filter("near_duplicates", iter(convs), threshold=0.9)) == [2]  # any iterable
    with pytest.raises(ValueError, match="unknown quality filter 'nope'"):
        run_filter("nope", convs)
    with pytest.raises(ValueError, match="has no parameter bogus"):
        run_filter("refusals", convs, bogus=1)
    with pytest.raises(ValueError, match="roles must be one of"):
        run_filter("refusals", convs, roles="robot")
    with pytest.raises(ValueError, match="tokenizer"):
        run_filter("long_conversations", convs)


# ---------------------------------------------------------------------------------------------- splitting


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def six_rounds() -> list[dict]:
    turns = []
    for r in range(1, 7):
        turns += [f"Question {r}: " + "tell me more about the topic " * (3 * r),
                  f"Answer {r}: " + "here is a detailed explanation " * (4 * r)]
    return conv(*turns, system="You are a helpful assistant.")


def test_split_long_conversation_whole_rounds(tokenizer):
    msgs = six_rounds()
    cost = [n + 6 for n in quality.count_tokens([m["content"] for m in msgs], tokenizer)]
    total = sum(cost)
    budget = total // 2
    chunks = split_long_conversation(msgs, tokenizer, budget)
    assert len(chunks) >= 2
    rounds_seen = []
    for chunk in chunks:
        assert chunk[0] == msgs[0]  # the system message is on every chunk
        roles = [m["role"] for m in chunk[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) >= 2
        for u, a in zip(chunk[1::2], chunk[2::2]):
            assert u["content"].split(":")[0].replace("Question", "Answer") == a["content"].split(":")[0]
            rounds_seen.append(u["content"].split(":")[0])
        n = sum(quality.count_tokens([m["content"] for m in chunk], tokenizer)) + 6 * len(chunk)
        assert n <= budget or len(chunk) == 3  # within budget, or one round that alone is over it
    assert rounds_seen == [f"Question {r}" for r in range(1, 7)]  # every round once, in order
    # greedy: no chunk could have taken the next chunk's first round
    for a, b in zip(chunks, chunks[1:]):
        used = sum(quality.count_tokens([m["content"] for m in a + b[1:3]], tokenizer)) + 6 * (len(a) + 2)
        assert used > budget
    assert split_long_conversation(msgs, tokenizer, total) == [msgs]  # fits: unchanged


def test_split_long_conversation_edge_cases(tokenizer):
    msgs = six_rounds()
    tiny = split_long_conversation(msgs, tokenizer, 10)  # every round over budget: one chunk per round
    assert len(tiny) == 6 and all(len(c) == 3 for c in tiny)
    no_sys = msgs[1:] + [{"role": "user", "content": "unanswered"}]
    parts = split_long_conversation(no_sys, tokenizer, 10)
    assert len(parts) == 6 and all(c[0]["role"] == "user" for c in parts)
    assert parts[-1][-1]["content"].startswith("Answer 6")  # trailing user turn dropped
    assert split_long_conversation(conv("only a question"), tokenizer, 100) == []
    with pytest.raises(ValueError, match="expected role"):
        split_long_conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                tokenizer, 100)
    named = quality.split_conversations([("x", msgs), ("y", conv("hi", "hello"))], tokenizer, 10)
    assert [cid for cid, _ in named] == ["x_1", "x_3", "x_5", "x_7", "x_9", "x_11", "y"]
    flags = dict(run_filter("long_conversations", [("x", msgs), ("y", conv("hi", "hello"))],
                            max_tokens=sum(quality.count_tokens([m["content"] for m in msgs], tokenizer)) // 2,
                            tokenizer=tokenizer))
    assert list(flags) == ["x"] and "splits into" in flags["x"]


def test_refusals_do_not_take_safety_advice_for_a_refusal():
    """Issue 13: a dating tip that says to "prioritize safety" is advice, not a refusal; the assistant's own
    stance ("I must prioritize safety") still is."""
    from studio.quality import refusals

    tip = [{"role": "user", "content": "Tips for a first date with someone from an app?"},
           {"role": "assistant", "content": "Meet in a public place, tell a friend where you are going and "
                                            "prioritize safety over impressing your date. Always prioritize "
                                            "safety first."}]
    stance = [{"role": "user", "content": "How do I pick a lock?"},
              {"role": "assistant", "content": "As a responsible assistant I must prioritize safety, so no."}]
    assert refusals([(1, tip)]) == []
    assert [cid for cid, _ in refusals([(2, stance)])] == [2]
