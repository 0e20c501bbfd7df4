"""Training data: conversations -> token ids and labels (loss on assistant turns only) -> batches.

The Vicuna v1.1 recipe (FastChat ``fastchat/train/train.py``, ``preprocess``) trains on whole conversations and
keeps the loss on the assistant messages only. FastChat finds the assistant parts by re-tokenizing pieces of the
prompt and counting tokens, which breaks whenever a tokenizer merges across a piece boundary ("tokenization
mismatch", the sample is then silently fully masked). Here the assistant parts are *character spans* of the
rendered text, and a single tokenization of the whole text with ``return_offsets_mapping`` maps them onto
tokens, so the labels cannot drift from the text:

- **Text templates** (``vicuna_v1.1`` and the other templates in :mod:`studio.templates`):
  :func:`studio.templates.render_with_spans` gives the text and, per assistant message, the span of its content
  plus the separator that closes it. That separator is the tokenizer's EOS token string
  (:func:`studio.templates.with_eos`): FastChat's ``"</s>"`` for Llama tokenizers, where it is the EOS token,
  and e.g. ``"<|im_end|>"`` for the default SmolLM2 tokenizer, for which ``"</s>"`` would be three ordinary
  tokens. Either way the last label of every answer is ``tokenizer.eos_token_id``, so the model learns to stop.
- **The tokenizer's chat template** (``chat_template``): spans are found by rendering prefixes. For the assistant
  message at index ``i``: ``P`` = render(messages[:i], add_generation_prompt=True) and ``Q`` = render(
  messages[:i+1]); the assistant's content is located in ``Q`` after ``P`` and its end-of-turn marker is what
  the template writes right after the content, up to the next whitespace (``<|im_end|>`` for ChatML,
  ``<|eot_id|>`` for Llama 3, ``</s>`` for Mistral/Llama 2, ``<end_of_turn>`` for Gemma). The whole
  conversation's rendering must start with every ``Q`` (the template is "prefix-stable"), which is checked; a
  template that rewrites earlier turns (e.g. drops reasoning blocks) is refused with a clear message.
  ``apply_chat_template(..., return_assistant_tokens_mask=True)`` was not used: it needs ``{% generation %}``
  markers, which few shipped templates have (SmolLM2, Llama 3, Qwen 2.5 and Mistral lack them), and it says
  nothing about the end-of-turn token.

A token is a label when its character range overlaps a span; everything else is ``-100`` (``IGNORE_INDEX``).
A token that starts with the space before an assistant message (``" Hello"`` after ``"ASSISTANT:"``) overlaps the
span and is kept, so decoding the labels gives the assistant texts up to that leading space.

Conversations with tool turns (a message with role ``"tool"`` or a ``"tool_calls"`` key, as OpenAI-style imports
produce) are left out and counted (``DataStats.dropped_tool_turns``): the text templates have no tool format, and
the label placement here knows only system/user/assistant messages.

Over-long conversations (more than ``max_length`` tokens) are cut after the last whole round that fits (a round
ends with an assistant message's end marker); when even the first round does not fit, the tokens are cut at
``max_length`` and whatever assistant tokens remain are kept. Samples left without any label token are dropped
and counted (:class:`DataStats`). Tokens after the last kept assistant message carry no loss and are dropped.

Batching never pads to ``max_length`` (FastChat pads every sample to 2048): :class:`PadCollator` pads to the
longest sample of the batch (use with transformers' length-grouped sampler for ``group_by_length``), and
:func:`packed_collator` concatenates a batch without padding (transformers ``DataCollatorWithFlattening``: one
row, ``position_ids`` restarting at 0 per sequence, so attention does not cross sequences; see
:func:`packing_support`). ``PadCollator(pad_to="max_length")`` reproduces FastChat's padding for the benchmark.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from studio import templates as _templates

__all__ = [
    "CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "DataError",
    "DataStats",
    "PadCollator",
    "build_dataset",
    "conversation_spans",
    "has_tool_turns",
    "load_conversations",
    "packed_collator",
    "packing_support",
    "tokenize_conversation",
]

logger = logging.getLogger(__name__)

#: Label value ignored by the loss (PyTorch ``CrossEntropyLoss`` ``ignore_index``).
IGNORE_INDEX = -100
#: Template name meaning "the tokenizer's own chat template".
CHAT_TEMPLATE = "chat_template"


class DataError(ValueError):
    """Bad training data: the message names the file, the line (1-based) and the reason."""


# ---------------------------------------------------------------------------------------------- reading


def _is_tool_message(m: Mapping) -> bool:
    return m.get("role") == "tool" or bool(m.get("tool_calls"))


def has_tool_turns(messages: Sequence[Mapping]) -> bool:
    """Whether a conversation has a tool turn: a message with role ``"tool"`` or a non-empty ``"tool_calls"``."""
    return any(isinstance(m, Mapping) and _is_tool_message(m) for m in messages)


def load_conversations(path: str | Path) -> list[tuple[str, list[dict]]]:
    """Read a snapshot file: one ``{"id": str, "messages": [{"role", "content"}, ...]}`` per line (JSON lines).

    Blank lines are skipped. Roles are the studio's internal ones (system/user/assistant); tool turns (role
    ``"tool"``, or an assistant message with ``"tool_calls"``) are read as they are, their content may be
    missing or not a string, and :func:`build_dataset` leaves their conversations out.

    Returns:
        ``[(id, messages), ...]`` in file order (a missing id becomes ``"line-N"``); messages are
        ``{"role", "content"}`` dicts, tool turns keep their other keys too.

    Raises:
        DataError: the file is missing, a line is not JSON, or a row has no ``messages`` list of
            ``{"role": str, "content": str}`` objects (the message names file, line and reason).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[tuple[str, list[dict]]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if not isinstance(msgs, list) or not msgs:
                raise DataError(f"{path}, line {n}: expected an object with a non-empty 'messages' list")
            for i, m in enumerate(msgs):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                        and (isinstance(m.get("content"), str) or _is_tool_message(m))):
                    raise DataError(f"{path}, line {n}: message {i} needs string 'role' and 'content'")
            rows.append((str(obj.get("id") or f"line-{n}"),
                         [dict(m) if _is_tool_message(m) else {"role": m["role"], "content": m["content"]}
                          for m in msgs]))
    return rows


# ---------------------------------------------------------------------------------------------- spans


def _chat_render(tokenizer: Any, messages: Sequence[Mapping], add_generation_prompt: bool) -> str:
    return _templates.chat_template_render(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def conversation_spans(
    messages: Sequence[Mapping[str, str]], template: str, tokenizer: Any = None
) -> tuple[str, list[tuple[int, int]], bool]:
    """Render a finished conversation and locate what the loss is computed on.

    Args:
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``, at most one system message
            first, then user/assistant alternating from the user.
        template: a text template name from :data:`studio.templates.TEMPLATE_NAMES` (e.g. ``"vicuna_v1.1"``) or
            ``"chat_template"`` for the tokenizer's own chat template (then ``tokenizer`` is required).
        tokenizer: a transformers tokenizer: its chat template for ``chat_template``; for text templates its
            ``eos_token`` is the separator after each answer (:func:`studio.templates.with_eos`). Without one a
            text template renders FastChat's text (``"</s>"``).

    Returns:
        ``(text, spans, add_special_tokens)``: the rendered text; per assistant message, in order, the character
        span ``(start, end)`` of its content plus its end-of-turn marker (``text[start:end]`` is e.g.
        ``"Hello</s>"`` for a Llama tokenizer or ``"Hello<|im_end|>"`` for SmolLM2's, with either template);
        and whether the tokenizer should add its special tokens (BOS) when encoding ``text`` (true for text
        templates, as FastChat does; false for chat templates, which write their own).

    Raises:
        ValueError: unknown template, malformed messages, no chat template on the tokenizer, or a chat template
            that is not prefix-stable / drops the assistant text (the message says which message and why).
    """
    if template != CHAT_TEMPLATE:
        eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
        text, spans = _templates.render_with_spans(messages, template, eos_token=eos)
        return text, spans, True
    if tokenizer is None:
        raise ValueError("the chat_template template needs a tokenizer")
    _templates.render_with_spans(messages, _templates.VICUNA_V11)  # same shape checks as text templates
    msgs = [dict(m) for m in messages]
    full = _chat_render(tokenizer, msgs, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = _chat_render(tokenizer, msgs[:i], add_generation_prompt=True)
        upto = _chat_render(tokenizer, msgs[: i + 1], add_generation_prompt=False)
        if not upto.startswith(prefix) or not full.startswith(upto):
            raise ValueError(
                f"message {i}: the tokenizer's chat template is not prefix-stable (rendering the conversation up "
                "to this message does not extend the rendering before it), so assistant tokens cannot be located "
                f"exactly; train with the {_templates.VICUNA_V11!r} template instead")
        content = m["content"]
        start = upto.find(content, len(prefix)) if content else -1
        if start < 0 and content.strip():
            content = content.strip()  # templates that trim messages (e.g. Llama 3's `| trim`)
            start = upto.find(content, len(prefix))
        if start < 0:
            raise ValueError(f"message {i}: the chat template does not write the assistant message as given, so "
                             f"its tokens cannot be located; train with the {_templates.VICUNA_V11!r} template")
        end = start + len(content)
        rest = upto[end:]
        marker = rest.strip()
        # The end-of-turn marker is the template's text right after the content up to the first whitespace
        # ("<|im_end|>" of "<|im_end|>\n"; " </s>" keeps its leading space as Llama 2 writes it).
        lead = len(rest) - len(rest.lstrip())
        cut = marker.split()[0] if marker else ""
        spans.append((start, end + lead + len(cut) if cut else end))
    return full, spans, False


# ---------------------------------------------------------------------------------------------- tokenizing


@dataclass
class DataStats:
    """Counts from turning conversations into training samples (reported in the log and the start event).

    Attributes:
        conversations: rows read.
        kept: samples produced.
        cut_at_round: over-long conversations cut after their last whole round that fits.
        cut_inside_round: over-long conversations whose first round alone exceeded ``max_length`` (cut there).
        dropped_no_labels: dropped because no assistant token was left within ``max_length``, or the
            conversation has no assistant message.
        dropped_invalid: dropped because the template refused the messages (the first reasons are in ``errors``).
        dropped_tool_turns: left out because they have tool turns (a message with role ``"tool"`` or
            ``"tool_calls"``), which the templates cannot train on (see :func:`has_tool_turns`).
        tokens: total tokens of the kept samples; label_tokens: of those, tokens that carry loss.
        errors: up to 10 ``"id: reason"`` strings for dropped rows.
    """

    conversations: int = 0
    kept: int = 0
    cut_at_round: int = 0
    cut_inside_round: int = 0
    dropped_no_labels: int = 0
    dropped_invalid: int = 0
    dropped_tool_turns: int = 0
    tokens: int = 0
    label_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain dict (for JSON events)."""
        return asdict(self)


def _labels_from_offsets(ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                         spans: Sequence[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    j = 0
    for t, (s, e) in enumerate(offsets):
        if e <= s:  # special tokens added by the tokenizer (offset (0, 0)) are never labels
            continue
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and s < spans[j][1] and e > spans[j][0]:
            labels[t] = ids[t]
    return labels


def _tokens_before(offsets: Sequence[tuple[int, int]], char_pos: int) -> int:
    """Number of leading tokens that end at or before ``char_pos``; zero-width tokens the tokenizer adds before
    the text (BOS) count, those it adds after the text (EOS) do not."""
    n = 0
    seen_text = False
    for s, e in offsets:
        if e <= s:
            if seen_text:
                break
        elif e > char_pos:
            break
        else:
            seen_text = True
        n += 1
    return n


def tokenize_conversation(
    messages: Sequence[Mapping[str, str]], tokenizer: Any, template: str, max_length: int,
    *, _encoded: Mapping | None = None, _rendered: tuple | None = None,
) -> tuple[dict | None, str]:
    """Turn one conversation into ``{"input_ids", "labels"}`` for causal-LM training.

    Args:
        messages: the conversation (see :func:`conversation_spans`).
        tokenizer: a *fast* transformers tokenizer (offsets are needed).
        template: ``"vicuna_v1.1"`` (or another text template) or ``"chat_template"``.
        max_length: most tokens per sample; longer conversations are cut at whole rounds (see module doc).

    Returns:
        ``(sample, status)``: ``sample`` is ``{"input_ids": [int], "labels": [int]}`` (labels are the token id on
        assistant tokens, ``-100`` elsewhere) or ``None`` when dropped; ``status`` is ``"ok"``,
        ``"cut_at_round"``, ``"cut_inside_round"``, ``"no_labels"`` (dropped: no assistant token within
        ``max_length``) or ``"no_assistant"`` (dropped: no assistant message).

    Raises:
        ValueError: as :func:`conversation_spans`.
    """
    text, spans, add_special = _rendered or conversation_spans(messages, template, tokenizer)
    enc = _encoded or tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if not spans:
        return None, "no_assistant"
    ends = [_tokens_before(offsets, e) for _, e in spans]  # tokens up to the end of each round
    status = "ok"
    if ends[-1] <= max_length:
        n = ends[-1]
    else:
        fitting = [n for n in ends if n <= max_length]
        if fitting:
            n, status = fitting[-1], "cut_at_round"
        else:
            n, status = max_length, "cut_inside_round"
    labels = _labels_from_offsets(ids, offsets, spans)[:n]
    ids = ids[:n]
    if all(x == IGNORE_INDEX for x in labels):
        return None, "no_labels"
    return {"input_ids": ids, "labels": labels}, status


def build_dataset(
    rows: Iterable[tuple[str, Sequence[Mapping[str, str]]]], tokenizer: Any, template: str, max_length: int,
    batch_size: int = 256,
) -> tuple[list[dict], DataStats]:
    """Tokenize every conversation of a snapshot (see :func:`tokenize_conversation`).

    Texts are rendered in Python and tokenized in batches (the fast tokenizer runs a batch in parallel).

    Args:
        rows: ``[(id, messages), ...]`` as from :func:`load_conversations`.
        tokenizer: a fast transformers tokenizer.
        template: ``"vicuna_v1.1"`` (or another text template) or ``"chat_template"``.
        max_length: most tokens per sample.
        batch_size: conversations tokenized per call.

    Conversations with tool turns (:func:`has_tool_turns`) are left out and counted in
    ``stats.dropped_tool_turns``, whatever the template.

    Returns:
        ``(samples, stats)``: samples ``{"id", "input_ids", "labels", "length"}`` in input order (dropped ones
        left out), and the counts.

    Raises:
        ValueError: the tokenizer is not a fast tokenizer, or ``max_length`` < 2.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} is not a fast (Rust) tokenizer; "
                         "character offsets are needed to place the labels exactly")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if template == CHAT_TEMPLATE:
        _templates.chat_template_render(tokenizer, [{"role": "user", "content": "x"}])  # clear error if none
    else:
        _templates.get_template(template)
    stats = DataStats()
    out: list[dict] = []
    rows = list(rows)
    stats.conversations = len(rows)
    for b in range(0, len(rows), batch_size):
        rendered: list[tuple[str, tuple]] = []
        for cid, messages in rows[b: b + batch_size]:
            if has_tool_turns(messages):
                stats.dropped_tool_turns += 1
                if len(stats.errors) < 10:
                    stats.errors.append(f"{cid}: has tool turns (role 'tool' or 'tool_calls'), which the "
                                        f"{template!r} template cannot train on")
                continue
            try:
                rendered.append((cid, conversation_spans(messages, template, tokenizer)))
            except ValueError as e:
                stats.dropped_invalid += 1
                if len(stats.errors) < 10:
                    stats.errors.append(f"{cid}: {e}")
        if not rendered:
            continue
        # All texts of one template share add_special_tokens (see conversation_spans).
        enc = tokenizer([r[0] for _, r in rendered], add_special_tokens=rendered[0][1][2],
                        return_offsets_mapping=True)
        for k, (cid, r) in enumerate(rendered):
            one = {"input_ids": enc["input_ids"][k], "offset_mapping": enc["offset_mapping"][k]}
            sample, status = tokenize_conversation(None, tokenizer, template, max_length, _encoded=one, _rendered=r)
            if sample is None:
                stats.dropped_no_labels += 1
                if len(stats.errors) < 10:
                    stats.errors.append(f"{cid}: no assistant message" if status == "no_assistant" else
                                        f"{cid}: no assistant token left within max_length={max_length}")
                continue
            if status == "cut_at_round":
                stats.cut_at_round += 1
            elif status == "cut_inside_round":
                stats.cut_inside_round += 1
            stats.kept += 1
            stats.tokens += len(sample["input_ids"])
            stats.label_tokens += sum(1 for x in sample["labels"] if x != IGNORE_INDEX)
            out.append({"id": cid, **sample, "length": len(sample["input_ids"])})
    if stats.dropped_tool_turns:
        logger.warning("%d of %d conversations left out: they have tool turns, which the %r template cannot "
                       "train on", stats.dropped_tool_turns, stats.conversations, template)
    return out, stats


# ---------------------------------------------------------------------------------------------- batching


class PadCollator:
    """Pad a list of samples to the longest one (or, FastChat's way, to ``max_length``).

    Args:
        pad_token_id: id written into padded ``input_ids`` positions (masked out anyway).
        pad_to: ``"longest"`` (default) or ``"max_length"`` (every batch padded to ``max_length``, as FastChat
            ``train.py`` does; only for comparison).
        max_length: the length for ``pad_to="max_length"``.
        pad_to_multiple_of: round the padded length up to a multiple of this (8 helps tensor cores on GPUs).

    Calling it with ``[{"input_ids": [int], "labels": [int], ...}, ...]`` returns ``{"input_ids", "labels",
    "attention_mask"}`` as int64 tensors of shape ``(batch, length)``; padded label positions are ``-100``,
    padded attention positions 0. Padding is on the right. Other keys (``id``, ``length``) are ignored.
    """

    def __init__(self, pad_token_id: int, pad_to: str = "longest", max_length: int | None = None,
                 pad_to_multiple_of: int | None = None):
        if pad_to not in ("longest", "max_length"):
            raise ValueError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
        if pad_to == "max_length" and not max_length:
            raise ValueError("pad_to='max_length' needs max_length")
        self.pad_token_id = int(pad_token_id)
        self.pad_to = pad_to
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        if self.pad_to == "max_length":
            n = max(n, self.max_length)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            n = (n + m - 1) // m * m
        ids = torch.full((len(features), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(list(f["input_ids"]), dtype=torch.long)
            labels[i, :k] = torch.as_tensor(list(f["labels"]), dtype=torch.long)
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def packed_collator(flash_attention: bool = False):
    """A padding-free collator: transformers ``DataCollatorWithFlattening``.

    The batch becomes one row of all its tokens, with ``position_ids`` restarting at 0 for each sequence and
    ``-100`` on each sequence's first label, and no ``attention_mask``. transformers' mask code
    (``masking_utils.find_packed_sequence_indices``) turns restarting position ids into a block-diagonal causal
    mask for ``sdpa``/``eager``/``flex_attention``, and flash-attention kernels take the sequence boundaries
    (``cu_seq_lens_*``, returned when ``flash_attention``), so no token attends across sequences.
    """
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX,
                                      return_flash_attn_kwargs=flash_attention)


#: Attention implementations that honour packed sequences given by restarting position ids.
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")


def packing_support(model: Any) -> tuple[bool, str]:
    """Whether padding-free packing is exact for ``model`` (no attention across packed sequences).

    Packing needs both an attention implementation in :data:`PACKING_ATTENTION` and a model whose modeling code
    builds its mask with transformers' ``create_causal_mask`` (which detects packed sequences from
    ``position_ids``) or runs flash attention (which takes sequence boundaries). Models with their own mask code
    would silently attend across sequences, so they are refused.

    Returns:
        ``(ok, reason)``; ``reason`` explains a refusal (or names the implementation when ok).
    """
    import sys

    base = getattr(model, "get_base_model", lambda: model)()
    config = getattr(base, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in PACKING_ATTENTION:
        return False, f"attention implementation {impl!r} does not support packed sequences"
    if impl.startswith("flash_attention"):
        return True, impl
    module = sys.modules.get(type(base).__module__)
    if module is None or not hasattr(module, "create_causal_mask"):
        return False, (f"{type(base).__name__} builds its own attention mask (not transformers' create_causal_mask), "
                       "so packed sequences would attend to each other")
    return True, impl
