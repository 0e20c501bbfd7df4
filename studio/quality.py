"""Quality filters for conversation data: the checks the Vicuna and WizardVicuna pipelines ran on their data.

Every filter is a pure function over ``conversations``, a list of ``(conv_id, messages)`` pairs (``messages``
as everywhere in the studio: ``[{"role": "system"|"user"|"assistant", "content": str}]``), and returns the
conversations it flags as ``[(conv_id, reason)]`` in input order, one entry per flagged id. Nothing is
changed or deleted here: the caller decides what to do with the flags (tag, delete, export without them).

``FILTERS`` lists them with a title, a plain-words explanation for the page, and their parameters;
``run_filter(name, conversations, **params)`` runs one by name. ``split_long_conversation`` is the one
transform: it cuts a conversation that is over a token budget into whole-round chunks.

Sources:

- FastChat ``fastchat/data/filter_wrong_format.py`` (lists whose items are all numbered "1."),
  ``fastchat/data/split_long_conversation.py`` (whole-round chunks under ``--max-length``) and
  ``fastchat/data/optional_clean.py`` (language filter), the Vicuna data cleaning (FastChat
  ``docs/commands/data_cleaning.md``).
- The community "unfiltered" cleaning used for WizardVicuna-Uncensored and its relatives (the
  ``optional_clean.py`` of ShareGPT_Vicuna_unfiltered and ``wizardlm_clean.py`` of
  WizardLM_alpaca_evol_instruct_70k_unfiltered): drop conversations whose assistant says "As an AI language
  model", refuses, or moralises. Our phrase list is ``REFUSAL_PHRASES``.
- Near duplicates: MinHash with locality-sensitive hashing (Broder 1997), the usual way to de-duplicate
  instruction data at scale, with the similarity checked exactly before flagging.
- Language identification: ``py3langid`` (a maintained fork of langid.py, Lui & Baldwin 2012), whose model
  ships inside the wheel, so it works offline.
"""

from __future__ import annotations

import gc
import re
import unicodedata
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Hashable, Iterable

import numpy as np

Conversation = tuple[Hashable, list[dict]]
"""``(conv_id, messages)``."""

Flag = tuple[Hashable, str]
"""``(conv_id, reason)``."""

SCOPES = ("first_user", "user", "conversation")
"""What text a duplicate check compares: the first user turn, all user turns, or every non-system turn."""

FASTCHAT_MESSAGE_OVERHEAD = 6
"""Tokens FastChat's ``split_long_conversation`` adds to each message for its role label and separators."""


# ---------------------------------------------------------------------------------------------- helpers


def _text_of(messages: list[dict], scope: str) -> str:
    if scope == "first_user":
        return next((m["content"] for m in messages if m["role"] == "user"), "")
    if scope == "user":
        return "\n".join(m["content"] for m in messages if m["role"] == "user")
    if scope == "conversation":
        return "\n".join(m["content"] for m in messages if m["role"] != "system")
    raise ValueError(f"unknown scope '{scope}' (one of: {', '.join(SCOPES)})")


def normalize_text(text: str) -> str:
    """The form duplicates are compared in: Unicode NFKC, case-folded, runs of whitespace made one space,
    and trailing ``. ! ?`` and spaces removed. Punctuation inside the text is kept (``1+1`` is not ``1-1``)."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(" .!?。！？")


def _roles(roles: str) -> tuple[str, ...]:
    if roles in ("all", "", None):
        return ("user", "assistant")
    if roles not in ("user", "assistant"):
        raise ValueError(f"unknown roles '{roles}' (all, user, assistant)")
    return (roles,)


def _turn_no(messages: list[dict], i: int) -> int:
    """1-based number of message ``i`` among the non-system messages (as the chat view numbers turns)."""
    return sum(1 for m in messages[: i + 1] if m["role"] != "system")


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    """Token counts of ``texts`` (no special tokens added).

    Args:
        tokenizer: a Hugging Face tokenizer (called once on the whole list), or any callable ``str -> int``.
    """
    if not texts:
        return []
    if hasattr(tokenizer, "convert_tokens_to_ids"):  # a transformers tokenizer
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [int(tokenizer(t)) for t in texts]


def _check_range(name: str, value, lo=None, hi=None) -> None:
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be at least {lo} (got {value})")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be at most {hi} (got {value})")


@contextmanager
def _no_gc():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------------------------------------- duplicates


def exact_duplicates(conversations: Iterable[Conversation], scope: str = "first_user") -> list[Flag]:
    """Conversations whose text is the same as an earlier one's once normalised (``normalize_text``).

    The first conversation with a given text is kept; every later one is flagged with the id of that first
    one. Conversations with no text in the scope (e.g. no user turn) are never flagged.

    Args:
        scope: ``first_user`` (the instruction, as WizardVicuna de-duplicates its seeds), ``user`` or
            ``conversation`` (see ``SCOPES``).

    Returns:
        ``[(conv_id, "same first user turn as conversation 12")]`` in input order.
    """
    _text_of([], scope)  # validates scope
    seen: dict[str, Hashable] = {}
    flags: list[Flag] = []
    what = {"first_user": "first user turn", "user": "user turns", "conversation": "text"}[scope]
    for cid, messages in conversations:
        key = normalize_text(_text_of(messages, scope))
        if not key:
            continue
        if key in seen:
            flags.append((cid, f"same {what} as conversation {seen[key]}"))
        else:
            seen[key] = cid
    return flags


_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_ROLL = np.uint64(1099511628211)


def shingles(text: str, n: int = 5, unit: str = "char") -> np.ndarray:
    """The hashed n-grams of a normalised text (``normalize_text``): byte n-grams of its UTF-8 (``unit="char"``)
    or word n-grams (``unit="word"``), each hashed to 32 bits, as a sorted array of unique ``uint32``.
    A text shorter than ``n`` is one shingle; an empty text has none."""
    t = normalize_text(text)
    if unit == "char":
        v = np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    elif unit == "word":
        v = np.array([zlib.crc32(w.encode("utf-8")) for w in t.split()], dtype=np.uint64)
    else:
        raise ValueError(f"unknown shingle unit '{unit}' (char, word)")
    if v.size == 0:
        return np.empty(0, dtype=np.uint32)
    m = max(1, v.size - n + 1)
    h = v[:m].copy()
    for k in range(1, min(n, v.size)):  # polynomial rolling hash of each window (wraps mod 2^64)
        h = h * _ROLL + v[k:k + m]
    h = h * _MIX1  # then a splitmix64-style finaliser; keep the high 32 bits
    h ^= h >> np.uint64(31)
    h *= _MIX2
    h ^= h >> np.uint64(29)
    h = (h >> np.uint64(32)).astype(np.uint32)
    h.sort()
    return h[np.concatenate(([True], h[1:] != h[:-1]))] if h.size > 1 else h


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b|, 0..1 (1.0 for two empty ones), of two ``shingles`` arrays or two sets."""
    if isinstance(a, set):
        inter, union = len(a & b), len(a | b)
    else:
        inter = np.intersect1d(a, b, assume_unique=True).size
        union = a.size + b.size - inter
    return inter / union if union else 1.0


def minhash_signatures(arrays: list[np.ndarray], num_perm: int = 128, seed: int = 1,
                       chunk: int = 32768) -> np.ndarray:
    """MinHash signatures, ``(len(arrays), num_perm)`` ``uint32``: for each of ``num_perm`` random affine
    permutations of the 32-bit hash space (``x * a + b`` mod 2^32, ``a`` odd; the ``affine32`` scheme of
    datasketch 2), the smallest permuted shingle of each array. Two signatures agree in a position with
    probability close to the Jaccard similarity of their sets (Broder 1997). Computed a chunk of about
    ``chunk`` shingles at a time; empty arrays get all ``0xFFFFFFFF``."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 2**32, size=num_perm, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    out = np.full((len(arrays), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    sizes = np.array([x.size for x in arrays], dtype=np.int64)
    i = 0
    while i < len(arrays):
        j, total = i, 0
        while j < len(arrays) and (j == i or total + sizes[j] <= chunk):
            total += sizes[j]
            j += 1
        rows = [k for k in range(i, j) if sizes[k]]
        if rows:
            cat = np.concatenate([arrays[k] for k in rows])
            starts = np.concatenate(([0], np.cumsum(sizes[rows])[:-1]))
            permuted = a[:, None] * cat[None, :] + b[:, None]  # (num_perm, total), wraps mod 2^32
            out[rows] = np.minimum.reduceat(permuted, starts, axis=1).T
        i = j
    return out


def near_duplicates(conversations: Iterable[Conversation], threshold: float = 0.8, scope: str = "first_user",
                    ngram: int = 5, unit: str = "char", num_perm: int = 128) -> list[Flag]:
    """Conversations whose text is almost the same as an earlier one's: the Jaccard similarity of their
    n-gram sets is at least ``threshold``.

    Candidates are found with MinHash signatures and LSH banding (Broder 1997; Leskovec et al., "Mining of
    Massive Datasets" ch. 3) tuned so that a pair at the threshold is found with 99% probability
    (``lsh_params``), so the work grows linearly with the number of conversations; each candidate pair's
    similarity is then computed exactly, so the threshold is exact. Each conversation is compared with the
    conversations kept so far: the first of a group of near duplicates is kept and the later ones are
    flagged with the id of the one they resemble most (groups do not chain: A~B and B~C with A and C apart
    flags B only). Exact duplicates are near duplicates too.

    Written with numpy rather than ``datasketch``: on 70,000 instructions it is as fast and needs a quarter
    of the memory (the shingles stay ``uint32`` arrays for the exact check), with no extra dependency.

    Args:
        threshold: similarity from which two texts count as near duplicates, 0 < t <= 1 (0.8 by default).
        scope: see ``SCOPES``.
        ngram, unit: shingles of ``ngram`` characters (default 5, suits short instructions) or words (use
            ``unit="word", ngram=3`` for whole conversations).
        num_perm: MinHash permutations; more finds candidates near the threshold more reliably, slower.

    Returns:
        ``[(conv_id, "near duplicate of conversation 12 (similarity 0.86)")]`` in input order.

    Raises:
        ValueError: a parameter out of range.
    """
    _check_range("threshold", threshold, 0.01, 1.0)
    _check_range("ngram", ngram, 1, 50)
    _check_range("num_perm", num_perm, 16, 1024)
    _text_of([], scope)
    bands, rows = lsh_params(float(threshold), int(num_perm))
    with _no_gc():  # many small objects: the cyclic collector would rescan them over and over
        items = [(cid, shingles(_text_of(m, scope), int(ngram), unit)) for cid, m in conversations]
        items = [(cid, s) for cid, s in items if s.size]
        if not items:
            return []
        sig = minhash_signatures([s for _, s in items], int(num_perm))
        # one 64-bit key per band: the band's rows combined with random odd multipliers
        mult = np.random.default_rng(2).integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + 1
        wide = sig.astype(np.uint64)
        keys = np.stack([(wide[:, i * rows:(i + 1) * rows] * mult).sum(axis=1, dtype=np.uint64)
                         for i in range(bands)], axis=1).tolist()
        buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        flags: list[Flag] = []
        for k, (cid, sh) in enumerate(items):
            found: set[int] = set()
            for band, key in zip(buckets, keys[k]):
                hit = band.get(key)
                if hit:
                    found.update(hit)
            best, best_sim = None, 0.0
            for j in sorted(found):
                sim = jaccard(sh, items[j][1])
                if sim >= threshold and sim > best_sim:
                    best, best_sim = j, sim
            if best is None:
                for band, key in zip(buckets, keys[k]):
                    band.setdefault(key, []).append(k)
            else:
                flags.append((cid, f"near duplicate of conversation {items[best][0]} "
                                   f"(similarity {best_sim:.2f})"))
        return flags


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """LSH banding ``(bands, rows)`` with ``bands * rows <= num_perm``: the most rows per band (fewest
    false candidates) for which a pair exactly at ``threshold`` still becomes a candidate with probability
    ``recall`` (``1 - (1 - t^rows)^bands``). Candidates are checked exactly afterwards, so extra candidates
    cost time only, while a missed one is a missed duplicate."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


# ---------------------------------------------------------------------------------------------- refusals

REFUSAL_PHRASES: tuple[str, ...] = (
    # the assistant talking about being an AI
    "as an ai language model", "as a language model", "as a large language model", "as an ai assistant",
    "as an ai, i", "as an ai i ", "i'm an ai,", "i'm an ai ", "i am an ai,", "i am an ai ",
    "i am an ai language model", "i'm just an ai", "i am just an ai", "text-based ai language model",
    "as a machine learning model", "as a digital assistant",
    "i don't have personal opinions", "i do not have personal opinions", "i don't have personal preferences",
    "i do not have personal preferences", "i don't have personal beliefs", "i do not have personal beliefs",
    "i don't have feelings", "i do not have feelings", "my knowledge cutoff", "my knowledge cut-off",
    "my training data", "openai",
    # refusals
    "i'm sorry, but i cannot", "i'm sorry, but i can't", "i am sorry, but i cannot", "i'm sorry, i cannot",
    "i'm sorry, i can't", "sorry, but i cannot", "i cannot fulfill", "i can't fulfill", "i cannot comply",
    "i can't comply", "i cannot assist", "i can't assist", "i cannot help with", "i can't help with",
    "i cannot provide", "i can't provide", "unfortunately, i cannot", "i'm unable to", "i am unable to",
    "i'm not able to provide", "i am not able to provide", "i cannot create", "i cannot generate",
    "i'm afraid i cannot", "i'm afraid i can't", "i won't be able to", "i will not be able to",
    "against my programming", "programming prohibits", "cannot engage in", "i must decline",
    "i cannot support or promote", "cannot provide guidance", "cannot provide any information",
    "unable to offer assistance",
    # moralising boilerplate
    "it is not appropriate", "it's not appropriate", "it is never okay", "is not appropriate to",
    "goes against ethical", "violates ethical", "ethical guidelines", "my guidelines", "responsible ai",
    "ai principles", "i prioritize user safety", "i must prioritize safety", "adhere to safety guidelines",
    "promote harmful", "harmful or offensive", "offensive or harmful", "legal and ethical boundaries",
    "engage in unethical", "illegal or unethical", "please refrain",
)
"""Phrases that mark a refusal or "as an AI" boilerplate, matched case-insensitively inside assistant turns
(curly apostrophes count as straight ones), starting at a word boundary ("such as an AI …" does not count
as "as an AI …"). Drawn from the community "unfiltered" cleaning lists (see the module docstring) and
pruned of their most generic entries ("It is important to", "I'm sorry,") that also occur in good answers;
"prioritize safety" counts only as the assistant's own stance ("I must prioritize safety"): a dating tip that says
to prioritize safety is advice, not a refusal (issue 13)."""


def _fold(text: str) -> str:
    return text.casefold().replace("\u2019", "'").replace("\u2018", "'")


def refusals(conversations: Iterable[Conversation], roles: str = "assistant", extra_phrases: str = "",
             phrases: Iterable[str] | None = None) -> list[Flag]:
    """Conversations in which a turn refuses or talks like a template ("As an AI language model", "I'm
    sorry, but I cannot", "I cannot fulfill", "OpenAI", moralising about guidelines).

    This is the cleaning that made WizardVicuna-Uncensored: conversations whose assistant refuses or
    lectures teach a fine-tuned model to do the same, so they are dropped.

    Args:
        roles: the turns searched: ``assistant`` (default), ``user`` or ``all``.
        extra_phrases: more phrases, one per line (or separated by ``|``), added to the list.
        phrases: replace ``REFUSAL_PHRASES`` altogether.

    Returns:
        ``[(conv_id, 'assistant turn 2: "as an ai language model"')]``: the first phrase found.
    """
    base = list(REFUSAL_PHRASES if phrases is None else phrases)
    base += [p.strip() for p in re.split(r"[\n|]", extra_phrases or "") if p.strip()]
    needles = sorted({_fold(p) for p in base if p.strip()}, key=len, reverse=True)
    if not needles:
        return []
    # whole words at the start; "such as an AI assistant" is not "As an AI assistant"
    pattern = re.compile("|".join(("(?<!such )" if p.startswith("as ") else "") + r"(?<!\w)" + re.escape(p)
                                  for p in needles))
    wanted = _roles(roles)
    flags: list[Flag] = []
    for cid, messages in conversations:
        for i, m in enumerate(messages):
            if m["role"] in wanted:
                hit = pattern.search(_fold(m["content"]))
                if hit:
                    flags.append((cid, f'{m["role"]} turn {_turn_no(messages, i)}: "{hit.group(0).strip()}"'))
                    break
    return flags


# ---------------------------------------------------------------------------------------------- wrong format

_LIST_ONE = re.compile(r"(?m)^[ \t]*1\.[ \t]")


def wrong_format(conversations: Iterable[Conversation]) -> list[Flag]:
    """Conversations with a numbered list whose items are all numbered "1." (``1. a`` / ``1. b`` / ``1. c``).

    This is what happens when a chat page's HTML list is turned into text without its numbering: the
    numbers are lost and every item becomes "1.". FastChat's ``filter_wrong_format`` drops such
    conversations (its rule: a second line starting with "1. " follows one, with no "2" anywhere between
    them). Here any turn is checked, and a list may also start on the first line.

    Returns:
        ``[(conv_id, "assistant turn 2: a list numbered 1., 1., ... (numbering lost)")]``.
    """
    flags: list[Flag] = []
    for cid, messages in conversations:
        for i, m in enumerate(messages):
            text = m["content"]
            starts = [x.end() for x in _LIST_ONE.finditer(text)]
            if any("2" not in text[a:b] for a, b in zip(starts, starts[1:])):
                flags.append((cid, f"{m['role']} turn {_turn_no(messages, i)}: a list numbered 1., 1., ... "
                                   "(numbering lost)"))
                break
    return flags


# ---------------------------------------------------------------------------------------------- lengths


def turn_length(conversations: Iterable[Conversation], min_len: int = 2, max_len: int = 16000,
                unit: str = "chars", roles: str = "all", tokenizer=None) -> list[Flag]:
    """Conversations with a turn that is too short (e.g. an empty or one-letter answer) or too long (e.g. a
    pasted document), measured in characters or in tokens of a chosen model's tokenizer.

    Args:
        min_len: shortest acceptable turn, after stripping spaces (0 turns the check off).
        max_len: longest acceptable turn (0 turns the check off).
        unit: ``chars`` or ``tokens`` (needs ``tokenizer``).
        roles: turns checked: ``all`` (default), ``user`` or ``assistant``.
        tokenizer: a Hugging Face tokenizer, or a callable ``str -> int`` (for ``unit="tokens"``).

    Returns:
        ``[(conv_id, "assistant turn 2 is 1 chars (shorter than 2)")]``: the first offending turn.

    Raises:
        ValueError: ``unit="tokens"`` without a tokenizer, or a bad unit/role.
    """
    if unit not in ("chars", "tokens"):
        raise ValueError(f"unknown unit '{unit}' (chars, tokens)")
    if unit == "tokens" and tokenizer is None:
        raise ValueError("counting tokens needs a tokenizer (choose a model)")
    wanted = _roles(roles)
    convs = list(conversations)
    turns = [(k, i, m) for k, (_, msgs) in enumerate(convs) for i, m in enumerate(msgs) if m["role"] in wanted]
    texts = [m["content"].strip() for _, _, m in turns]
    lengths = count_tokens(texts, tokenizer) if unit == "tokens" else [len(t) for t in texts]
    first: dict[int, str] = {}
    for (k, i, m), n in zip(turns, lengths):
        if k in first:
            continue
        if min_len and n < min_len:
            first[k] = f"{m['role']} turn {_turn_no(convs[k][1], i)} is {n} {unit} (shorter than {min_len})"
        elif max_len and n > max_len:
            first[k] = f"{m['role']} turn {_turn_no(convs[k][1], i)} is {n} {unit} (longer than {max_len})"
    return [(convs[k][0], first[k]) for k in sorted(first)]


def _message_tokens(messages: list[dict], tokenizer, overhead: int) -> list[int]:
    return [n + overhead for n in count_tokens([m["content"] for m in messages], tokenizer)]


def split_long_conversation(messages: list[dict], tokenizer, max_tokens: int = 2048,
                            overhead: int = FASTCHAT_MESSAGE_OVERHEAD) -> list[list[dict]]:
    """Cut a conversation that is longer than a token budget into chunks of whole rounds.

    Method of FastChat ``fastchat/data/split_long_conversation.py`` (the Vicuna data preparation): a
    message costs its token count plus ``overhead`` (FastChat's 6, for the role label and separators); rounds
    (a user turn and its answer) are added to the current chunk while the chunk stays within
    ``max_tokens``; the round that would overflow starts the next chunk. Differences from FastChat, on
    purpose: a leading system message is repeated at the start of every chunk and counted in every
    chunk's budget; a single round longer than the budget becomes a chunk of its own (FastChat emitted an
    empty chunk there, and lost the last round when it overflowed); the final unanswered user turn, if
    any, is dropped, as FastChat does.

    Args:
        messages: ``[{"role", "content"}]``, optional system message first, then user/assistant alternating.
        tokenizer: a Hugging Face tokenizer (or a callable ``str -> int``).
        max_tokens: the budget per chunk (the training context length, e.g. 2048).
        overhead: tokens added per message.

    Returns:
        The chunks, each ``[system?] + user, assistant, user, assistant, ...``; ``[messages]`` unchanged
        (minus a trailing user turn) when it fits; ``[]`` when there is no complete round.

    Raises:
        ValueError: ``max_tokens`` < 1, or roles that do not alternate user/assistant.
    """
    if int(max_tokens) < 1:
        raise ValueError("max_tokens must be at least 1")
    system = [messages[0]] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    turns = turns[: len(turns) // 2 * 2]
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"message {i + 1 + len(system)}: expected role "
                             f"{'user' if i % 2 == 0 else 'assistant'}, found {m['role']}")
    if not turns:
        return []
    sys_cost = _message_tokens(system, tokenizer, overhead)[0] if system else 0
    costs = _message_tokens(turns, tokenizer, overhead)
    chunks: list[list[dict]] = []
    start, used = 0, sys_cost
    for i in range(0, len(turns), 2):
        cost = costs[i] + costs[i + 1]
        if i > start and used + cost > max_tokens:
            chunks.append(system + turns[start:i])
            start, used = i, sys_cost
        used += cost
    chunks.append(system + turns[start:])
    return chunks


def split_conversations(conversations: Iterable[Conversation], tokenizer, max_tokens: int = 2048,
                        overhead: int = FASTCHAT_MESSAGE_OVERHEAD) -> list[Conversation]:
    """``split_long_conversation`` over many: ``[(f"{conv_id}_{k}", chunk)]`` for the chunks of split
    conversations (``k`` = index of the chunk's first message, as FastChat names them), ``(conv_id,
    messages)`` for the ones that fit."""
    out: list[Conversation] = []
    for cid, messages in conversations:
        chunks = split_long_conversation(messages, tokenizer, max_tokens, overhead)
        if len(chunks) == 1:
            out.append((cid, chunks[0]))
            continue
        pos = 1 if messages and messages[0]["role"] == "system" else 0
        for chunk in chunks:
            out.append((f"{cid}_{pos}", chunk))
            pos += sum(1 for m in chunk if m["role"] != "system")
    return out


def long_conversations(conversations: Iterable[Conversation], max_tokens: int = 2048, tokenizer=None,
                       overhead: int = FASTCHAT_MESSAGE_OVERHEAD) -> list[Flag]:
    """Conversations longer than a token budget (the training context), counted as FastChat does (tokens
    plus ``overhead`` per message). Such conversations are cut by training, losing their end; split them
    into whole-round chunks instead (``split_long_conversation``).

    Returns:
        ``[(conv_id, "3150 tokens, over 2048: splits into 2 chunks")]``.

    Raises:
        ValueError: no tokenizer.
    """
    if tokenizer is None:
        raise ValueError("counting tokens needs a tokenizer (choose a model)")
    flags: list[Flag] = []
    for cid, messages in conversations:
        total = sum(_message_tokens(messages, tokenizer, overhead)) if messages else 0
        if total > max_tokens:
            n = len(split_long_conversation(messages, tokenizer, max_tokens, overhead))
            flags.append((cid, f"{total} tokens, over {max_tokens}: splits into {n} chunk{'s' * (n != 1)}"))
    return flags


# ---------------------------------------------------------------------------------------------- language

_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")


@lru_cache(maxsize=1)
def _language_identifier():
    try:
        from py3langid import langid
    except ImportError as e:  # pragma: no cover - listed in the project's dependencies
        raise RuntimeError("the language filter needs the py3langid package (pip install py3langid)") from e
    if hasattr(langid.LanguageIdentifier, "from_model_file"):  # py3langid >= 0.4
        return langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
    return langid.LanguageIdentifier.from_pickled_model(langid.MODEL_FILE, norm_probs=True)  # older releases


def detect_language(text: str) -> tuple[str, float]:
    """``(ISO 639-1 code, probability 0..1)`` of ``text``'s language (py3langid; code blocks removed)."""
    text = _INLINE_CODE.sub(" ", _CODE_BLOCK.sub(" ", text))
    lang, prob = _language_identifier().classify(text)
    return str(lang), float(prob)


def language(conversations: Iterable[Conversation], languages: str = "en", min_confidence: float = 0.5,
             min_chars: int = 20, scope: str = "conversation", max_chars: int = 2000) -> list[Flag]:
    """Conversations written in a language other than the ones wanted (FastChat's ``optional_clean`` kept
    or removed languages this way for Vicuna's data).

    The language is recognised offline by py3langid from the text without its code blocks. A text shorter
    than ``min_chars`` is never flagged (too little to tell), nor one whose language is recognised with
    less than ``min_confidence``.

    Args:
        languages: wanted languages, ISO 639-1 codes separated by commas or spaces (``"en"``, ``"en, de"``).
        min_confidence: how sure the identifier must be before a conversation is flagged, 0..1.
        min_chars: shortest text judged.
        scope: see ``SCOPES`` (default: every non-system turn).
        max_chars: only the first this many characters are read (speed).

    Returns:
        ``[(conv_id, "language fr (0.98), wanted: en")]``.
    """
    wanted = {x.strip().lower() for x in re.split(r"[,\s]+", languages or "") if x.strip()}
    if not wanted:
        raise ValueError("name at least one language to keep, e.g. 'en'")
    _text_of([], scope)
    flags: list[Flag] = []
    for cid, messages in conversations:
        text = _text_of(messages, scope)[: int(max_chars)]
        if len(text.strip()) < min_chars:
            continue
        lang, prob = detect_language(text)
        if lang not in wanted and prob >= min_confidence:
            flags.append((cid, f"language {lang} ({prob:.2f}), wanted: {', '.join(sorted(wanted))}"))
    return flags


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class FilterParam:
    """One parameter of a filter, as the page shows it.

    Attributes:
        name: keyword argument name.
        default: default value (its type is the control's type: bool, int, float, str; ``None`` for a
            tokenizer, which the page fills from a chosen registry model).
        help: one line for people.
        choices: allowed values for a drop-down, or empty.
        minimum, maximum: bounds for numbers, or None.
    """

    name: str
    default: Any
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class QualityFilter:
    """A named filter for the page and the command line.

    Attributes:
        name: key in ``FILTERS``.
        title: short label.
        explanation: what it flags and why, in plain words.
        source: where the rule comes from.
        fn: ``fn(conversations, **params) -> [(conv_id, reason)]``.
        params: its parameters.
    """

    name: str
    title: str
    explanation: str
    source: str
    fn: Callable[..., list[Flag]]
    params: tuple[FilterParam, ...] = field(default_factory=tuple)

    @property
    def needs_tokenizer(self) -> bool:
        """The filter counts tokens, so the caller passes ``tokenizer=``."""
        return any(p.name == "tokenizer" for p in self.params)

    def defaults(self) -> dict:
        """``{param: default}``."""
        return {p.name: p.default for p in self.params}


_SCOPE_PARAM = FilterParam("scope", "first_user", "which text is compared: the first user turn, all user turns, "
                           "or the whole conversation", SCOPES)
_TOKENIZER = FilterParam("tokenizer", None, "the model whose tokenizer counts tokens")

FILTERS: dict[str, QualityFilter] = {f.name: f for f in [
    QualityFilter(
        "exact_duplicates", "Exact duplicates",
        "Conversations that start with the same user message as an earlier one (ignoring case, spacing and "
        "final punctuation). The first one is kept, the later copies are flagged: duplicates make a model "
        "memorise some answers and waste training time.",
        "WizardVicunaLM / FastChat data cleaning (de-duplication of ShareGPT and seed instructions)",
        exact_duplicates, (_SCOPE_PARAM,)),
    QualityFilter(
        "near_duplicates", "Near duplicates",
        "Conversations whose opening message is almost the same as an earlier one's (the share of common "
        "5-character pieces, Jaccard similarity, is at least the threshold: 0.8 catches rewordings of a few "
        "words). The first of each group is kept. Fast on 70,000 conversations thanks to MinHash LSH.",
        "MinHash LSH (Broder 1997), the usual de-duplication of instruction data",
        near_duplicates, (
            FilterParam("threshold", 0.8, "similarity from which two texts are near duplicates", (), 0.3, 1.0),
            _SCOPE_PARAM,
            FilterParam("ngram", 5, "n-gram size (characters or words)", (), 1, 20),
            FilterParam("unit", "char", "n-grams of characters (short texts) or words (long texts)",
                        ("char", "word")),
            FilterParam("num_perm", 128, "MinHash permutations (more: more reliable, slower)", (), 16, 512),
        )),
    QualityFilter(
        "refusals", "Refusals and 'as an AI' boilerplate",
        "Conversations where the assistant refuses (\"I'm sorry, but I cannot…\", \"I cannot fulfill…\"), "
        "talks about being an AI (\"As an AI language model…\", \"OpenAI\"), or lectures about guidelines. "
        "A model trained on them learns to refuse and moralise; the uncensored WizardVicuna was made by "
        "removing them. The full phrase list is shown below; add your own.",
        "community 'unfiltered' cleaning scripts (ShareGPT_Vicuna_unfiltered optional_clean.py, "
        "WizardLM_alpaca_evol_instruct_70k_unfiltered wizardlm_clean.py)",
        refusals, (
            FilterParam("roles", "assistant", "which turns are searched", ("assistant", "user", "all")),
            FilterParam("extra_phrases", "", "more phrases, one per line"),
        )),
    QualityFilter(
        "wrong_format", "Lists that lost their numbering",
        "Conversations with a numbered list whose items are all numbered \"1.\" — the numbering was lost when "
        "the chat page was turned into text. Training on them teaches broken lists.",
        "FastChat fastchat/data/filter_wrong_format.py",
        wrong_format, ()),
    QualityFilter(
        "turn_length", "Too short or too long turns",
        "Conversations with a turn shorter than the minimum (empty or one-word answers) or longer than the "
        "maximum (pasted documents, runaway generations), in characters or tokens.",
        "Vicuna / WizardVicuna data cleaning (length limits)",
        turn_length, (
            FilterParam("min_len", 2, "shortest acceptable turn (0: no minimum)", (), 0, None),
            FilterParam("max_len", 16000, "longest acceptable turn (0: no maximum)", (), 0, None),
            FilterParam("unit", "chars", "count characters or tokens", ("chars", "tokens")),
            FilterParam("roles", "all", "which turns are checked", ("all", "user", "assistant")),
            _TOKENIZER,
        )),
    QualityFilter(
        "long_conversations", "Longer than the training context",
        "Conversations with more tokens than the training context (e.g. 2048). Training would cut them and "
        "lose their end; split them into chunks of whole rounds instead (each chunk starts with a user "
        "message and keeps the system message).",
        "FastChat fastchat/data/split_long_conversation.py",
        long_conversations, (
            FilterParam("max_tokens", 2048, "the token budget (training context length)", (), 64, None),
            _TOKENIZER,
        )),
    QualityFilter(
        "language", "Other languages",
        "Conversations written in a language you did not ask for, recognised offline (code blocks ignored). "
        "Short texts and unsure guesses are left alone.",
        "FastChat fastchat/data/optional_clean.py (language filter); py3langid",
        language, (
            FilterParam("languages", "en", "languages to keep, ISO codes separated by commas"),
            FilterParam("min_confidence", 0.5, "how sure the guess must be to flag", (), 0.0, 1.0),
            FilterParam("min_chars", 20, "shortest text judged", (), 0, None),
            FilterParam("scope", "conversation", "which text is judged", SCOPES),
        )),
]}
"""The filters the page and the command line list, by name."""


def run_filter(name: str, conversations: Iterable[Conversation], **params) -> list[Flag]:
    """Run the filter called ``name`` with ``params`` (missing ones take their defaults).

    Returns:
        ``[(conv_id, reason)]`` in input order.

    Raises:
        ValueError: unknown filter or parameter, a bad parameter value, or a token-counting filter
            without a tokenizer.
    """
    f = FILTERS.get(name)
    if f is None:
        raise ValueError(f"unknown quality filter '{name}' (known: {', '.join(FILTERS)})")
    allowed = {p.name for p in f.params}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"filter '{name}' has no parameter {', '.join(unknown)} "
                         f"(parameters: {', '.join(sorted(allowed)) or 'none'})")
    for p in f.params:
        if p.name in params and p.choices and params[p.name] not in p.choices:
            raise ValueError(f"{p.name} must be one of {', '.join(map(str, p.choices))} (got {params[p.name]!r})")
    return f.fn(list(conversations), **{**f.defaults(), **params})
