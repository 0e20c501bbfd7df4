"""Conversation templates: Vicuna v1.1 (exact) and the tokenizer's own chat template.

Messages are the studio's internal form, a list of ``{"role": "system"|"user"|"assistant", "content": str}``:
at most one system message, first; then user and assistant messages alternating, starting with the user.

The templates follow FastChat's ``fastchat/conversation.py``: one :class:`Template` dataclass (FastChat's
``Conversation``) and a registry of named templates. ``vicuna_v1.1`` renders exactly as FastChat's
``get_conv_template("vicuna_v1.1").get_prompt()`` (``SeparatorStyle.ADD_COLON_TWO``)::

    <system message> USER: <user 1> ASSISTANT: <assistant 1></s>USER: <user 2> ASSISTANT:

that is: the system message then ``sep``; each message as ``ROLE: content`` followed by ``sep`` (after a user
message) or ``sep2`` (after an assistant message); and, for generation, a final ``ASSISTANT:`` with no
trailing space (FastChat's ``(role, None)`` message).

**The separator after an answer is the tokenizer's EOS token.** FastChat's ``sep2`` ``"</s>"`` is the text of
Llama's EOS token: a Llama tokenizer reads it as the EOS id, so a model trained on it learns to end its answers
with EOS and ``generate`` stops there. For any other tokenizer (SmolLM2's EOS is ``<|im_end|>``, Qwen's
``<|im_end|>``/``<|endoftext|>``, Llama 3's ``<|eot_id|>``...) ``"</s>"`` is several ordinary tokens, and a model
trained on it never learns to emit its EOS. So every rendering function takes the tokenizer's EOS token string
(``eos_token=tokenizer.eos_token``) and :func:`with_eos`, the one place that decides, writes that string in place
of a ``"</s>"`` separator. With a Llama tokenizer (``eos_token == "</s>"``) or with no tokenizer
(``eos_token=None``) the text is FastChat's, character for character.

Public API: :class:`Template`, :data:`TEMPLATES`, :data:`TEMPLATE_NAMES`, :data:`LLAMA_EOS`,
:func:`get_template`, :func:`register_template`, :func:`with_eos`, :func:`render`, :func:`render_with_spans`,
:func:`chat_template_render`, :func:`stop_strings`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "ADD_COLON_SINGLE",
    "ADD_COLON_TWO",
    "LLAMA_EOS",
    "TEMPLATES",
    "TEMPLATE_NAMES",
    "VICUNA_V11",
    "Template",
    "chat_template_render",
    "get_template",
    "register_template",
    "render",
    "render_with_spans",
    "stop_strings",
    "with_eos",
]

#: FastChat ``SeparatorStyle.ADD_COLON_SINGLE``: ``ROLE: content`` + ``sep`` after every message.
ADD_COLON_SINGLE = "add_colon_single"
#: FastChat ``SeparatorStyle.ADD_COLON_TWO``: ``ROLE: content`` + ``sep`` after user, ``sep2`` after assistant.
ADD_COLON_TWO = "add_colon_two"
_STYLES = (ADD_COLON_SINGLE, ADD_COLON_TWO)

#: FastChat's ``sep2`` after an answer: the text of the Llama tokenizer's EOS token.
LLAMA_EOS = "</s>"

#: Name of the Vicuna v1.1 template (FastChat ``fastchat/conversation.py``, ``vicuna_v1.1``).
VICUNA_V11 = "vicuna_v1.1"

Message = Mapping[str, Any]


@dataclass(frozen=True)
class Template:
    """A text conversation template, after FastChat's ``Conversation`` dataclass.

    Attributes:
        name: registry name, e.g. ``"vicuna_v1.1"``.
        system_message: default system message, used when the messages carry none.
        roles: the (user, assistant) role names written before each message, e.g. ``("USER", "ASSISTANT")``.
        sep: separator written after the system message and after each user message (and, with
            ``ADD_COLON_SINGLE``, after every message).
        sep2: separator written after each assistant message (``ADD_COLON_TWO`` only), e.g. ``"</s>"`` (which
            :func:`with_eos` replaces by the tokenizer's EOS token string when that is not ``"</s>"``).
        stop_str: extra string that ends generation (FastChat's ``stop_str``), or ``None``.
        sep_style: :data:`ADD_COLON_TWO` or :data:`ADD_COLON_SINGLE`.
    """

    name: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None = None
    stop_str: str | None = None
    sep_style: str = ADD_COLON_TWO

    def __post_init__(self) -> None:
        if self.sep_style not in _STYLES:
            raise ValueError(f"template {self.name!r}: unknown sep_style {self.sep_style!r}; known: {_STYLES}")
        if self.sep_style == ADD_COLON_TWO and self.sep2 is None:
            raise ValueError(f"template {self.name!r}: sep_style {ADD_COLON_TWO!r} needs sep2")
        if len(self.roles) != 2:
            raise ValueError(f"template {self.name!r}: roles must be (user, assistant), got {self.roles!r}")

    def sep_after(self, role: str) -> str:
        """The separator written after a finished message of ``role`` ("user" or "assistant")."""
        if self.sep_style == ADD_COLON_TWO and role == "assistant":
            return self.sep2  # type: ignore[return-value]
        return self.sep


#: Every registered template, by name.
TEMPLATES: dict[str, Template] = {}


def register_template(template: Template, *, override: bool = False) -> Template:
    """Add ``template`` to :data:`TEMPLATES` (and :data:`TEMPLATE_NAMES`) and return it.

    Raises:
        ValueError: a template of that name is already registered and ``override`` is false.
    """
    if template.name in TEMPLATES and not override:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    global TEMPLATE_NAMES
    TEMPLATE_NAMES = tuple(TEMPLATES)
    return template


# The definitions below carry the values of FastChat's ``fastchat/conversation.py`` registrations.
register_template(
    Template(
        name=VICUNA_V11,
        system_message=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        roles=("USER", "ASSISTANT"),
        sep=" ",
        sep2="</s>",
        sep_style=ADD_COLON_TWO,
    )
)
register_template(
    Template(
        name="alpaca",
        system_message=(
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request."
        ),
        roles=("### Instruction", "### Response"),
        sep="\n\n",
        sep2="</s>",
        sep_style=ADD_COLON_TWO,
    )
)
register_template(
    Template(
        name="koala_v1",
        system_message="BEGINNING OF CONVERSATION:",
        roles=("USER", "GPT"),
        sep=" ",
        sep2="</s>",
        sep_style=ADD_COLON_TWO,
    )
)
register_template(
    Template(
        name="zero_shot",
        system_message=(
            "A chat between a curious human and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the human's questions."
        ),
        roles=("Human", "Assistant"),
        sep="\n### ",
        stop_str="###",
        sep_style=ADD_COLON_SINGLE,
    )
)

#: Names of the registered templates, in registration order.
TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATES)


def get_template(name: str | Template) -> Template:
    """Return the registered template called ``name`` (a :class:`Template` is returned as it is).

    Raises:
        ValueError: no template has that name; the message lists the known ones.
    """
    if isinstance(name, Template):
        return name
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        known = ", ".join(TEMPLATES)
        raise ValueError(f"unknown conversation template {name!r}; known templates: {known}") from None


def with_eos(template: str | Template, eos_token: str | None) -> Template:
    """The template as rendered for a tokenizer whose EOS token string is ``eos_token``.

    This is the one place that decides the separator after an answer. FastChat writes ``"</s>"`` (``sep2``)
    after each assistant message because that text is the Llama tokenizer's EOS token, so the model learns to
    end its answers with EOS. For a tokenizer whose EOS token is another string (``"<|im_end|>"`` for the
    default SmolLM2 model), ``"</s>"`` would be plain text; the returned template writes ``eos_token`` there
    instead. Templates without a ``"</s>"`` separator (``zero_shot``, a custom ``sep2``) are returned unchanged.

    Args:
        template: a template name or :class:`Template`.
        eos_token: the tokenizer's EOS token string (``tokenizer.eos_token``); ``None`` (no tokenizer) or
            ``"</s>"`` (Llama family) keeps FastChat's text exactly.

    Returns:
        The registered template itself, or a copy with ``sep2 = eos_token``.

    Raises:
        ValueError: unknown template, or ``eos_token`` is not ``None`` nor a non-empty string.
    """
    tmpl = get_template(template)
    if eos_token is None:
        return tmpl
    if not isinstance(eos_token, str) or not eos_token:
        raise ValueError(f"eos_token must be the tokenizer's EOS token string (e.g. {LLAMA_EOS!r}) or None, "
                         f"got {eos_token!r}")
    if tmpl.sep2 == LLAMA_EOS and eos_token != LLAMA_EOS:
        return replace(tmpl, sep2=eos_token)
    return tmpl


def _split_messages(messages: Sequence[Message], template: Template) -> tuple[str, list[tuple[str, str]]]:
    """Check ``messages`` and return (system message, [(role, content), ...] without the system message).

    Raises:
        ValueError: a message that is not a dict with a known role and str content, a system message that is
            not first, or user/assistant messages that do not alternate starting with the user. Empty content is
            refused except for a last assistant message (FastChat's ``(ASSISTANT, None)`` generation slot).
    """
    system = template.system_message
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {i}: expected a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        content = message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: role must be 'system', 'user' or 'assistant', got {role!r}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        if role == "system":
            if i != 0:
                raise ValueError(f"message {i}: a system message may only come first")
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"message {i}: expected a {expected!r} message (user and assistant must alternate, "
                f"starting with the user), got {role!r}"
            )
        if content == "" and not (role == "assistant" and i == len(messages) - 1):
            raise ValueError(f"message {i} ({role}): content is empty")
        turns.append((role, content))
    return system, turns


def _render(
    messages: Sequence[Message], template: Template, add_generation_prompt: bool
) -> tuple[str, list[tuple[int, int]]]:
    system, turns = _split_messages(messages, template)
    user_role, assistant_role = template.roles
    parts = [system, template.sep]
    pos = len(system) + len(template.sep)
    spans: list[tuple[int, int]] = []
    for role, content in turns:
        name = user_role if role == "user" else assistant_role
        if content == "":
            # FastChat: a message of None (our last, empty assistant message) is the generation slot.
            parts.append(name + ":")
            pos += len(name) + 1
            continue
        head = name + ": "
        tail = content + template.sep_after(role)
        start = pos + len(head)
        parts.append(head + tail)
        pos += len(head) + len(tail)
        if role == "assistant":
            spans.append((start, pos))
    if add_generation_prompt and turns and turns[-1][0] == "user":
        parts.append(assistant_role + ":")
    return "".join(parts), spans


def render(
    messages: Sequence[Message], template: str | Template = VICUNA_V11, add_generation_prompt: bool = True,
    *, eos_token: str | None = None,
) -> str:
    """Render ``messages`` as one prompt string with ``template`` (FastChat ``Conversation.get_prompt``).

    Args:
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``; an optional system message
            first replaces the template's default one; then user and assistant alternate, user first. A last
            assistant message with empty content is the generation slot (rendered ``ASSISTANT:``, as FastChat
            renders ``(ASSISTANT, None)``).
        template: a template name from :data:`TEMPLATE_NAMES` or a :class:`Template`; default ``vicuna_v1.1``.
        add_generation_prompt: when the last message is from the user, end with the assistant role and a colon,
            no trailing space (``"... USER: Hi ASSISTANT:"``), ready for the model to continue. Otherwise the
            text ends with the separator after the last message.
        eos_token: the tokenizer's EOS token string; a ``"</s>"`` separator after answers is written as this
            string instead (see :func:`with_eos`). ``None`` renders FastChat's text exactly.

    Returns:
        The prompt text, e.g. for vicuna_v1.1 and one user message ``"Hi"``:
        ``"A chat between ... user's questions. USER: Hi ASSISTANT:"``.

    Raises:
        ValueError: unknown template, or messages out of the shape above (the message names the index).
    """
    text, _ = _render(messages, with_eos(template, eos_token), add_generation_prompt)
    return text


def render_with_spans(
    messages: Sequence[Message], template: str | Template = VICUNA_V11, *, eos_token: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render a finished conversation and locate each assistant message in the text, for training labels.

    The text is ``render(messages, template, add_generation_prompt=False, eos_token=eos_token)``. Each span
    ``(start, end)`` is a pair of character offsets into that text, ``text[start:end]`` being one assistant
    message's content followed by the separator that closes it: for ``vicuna_v1.1`` the content plus the EOS
    token string (``"</s>"`` for Llama tokenizers and with no ``eos_token``, e.g. ``"<|im_end|>"`` for
    SmolLM2), so the model also learns to stop. The role prefix ``"ASSISTANT: "`` is outside the span. This is
    the part FastChat's ``train.py`` keeps as labels (the Vicuna v1.1 recipe: loss on assistant turns only);
    everything else is masked. Spans are in message order, one per assistant message.

    Args:
        messages: as for :func:`render`; every message must have content (no generation slot).
        template: a template name or :class:`Template`; default ``vicuna_v1.1``.
        eos_token: the tokenizer's EOS token string, as for :func:`render`.

    Returns:
        ``(text, spans)``, e.g. for ``[user "Hi", assistant "Hello"]``: spans ``[(s, e)]`` with
        ``text[s:e] == "Hello</s>"``.

    Raises:
        ValueError: unknown template, messages out of shape, or an assistant message with empty content.
    """
    tmpl = with_eos(template, eos_token)
    for i, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "assistant" and not message.get("content"):
            raise ValueError(f"message {i} (assistant): content is empty; a finished conversation is needed")
    return _render(messages, tmpl, add_generation_prompt=False)


def chat_template_render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with the tokenizer's own chat template (Jinja), as text.

    A thin wrapper over ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=add_generation_prompt)`` (transformers 5).

    Args:
        tokenizer: a transformers tokenizer (or processor) with ``apply_chat_template``.
        messages: ``[{"role": ..., "content": str}, ...]``, passed through unchanged.
        add_generation_prompt: append the template's assistant header so the model answers next.

    Returns:
        The rendered prompt string.

    Raises:
        ValueError: the tokenizer has no chat template (the message names the tokenizer and suggests the
            ``vicuna_v1.1`` template instead).
    """
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError(f"tokenizer {name!r} has no apply_chat_template; use a text template such as {VICUNA_V11!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {name!r} has no chat template (tokenizer.chat_template is empty); "
            f"render with a named template instead, e.g. {VICUNA_V11!r} (known: {', '.join(TEMPLATES)})"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):  # some processors return a list for batched input
        text = text[0]
    return text


def stop_strings(template_name: str | Template, eos_token: str | None = None) -> list[str]:
    """Strings that end generation for ``template_name``, besides the model's EOS token id.

    Generation stops on the EOS id first (the separator after an answer is the EOS token, see
    :func:`with_eos`); these strings are the fallback for a model that writes a separator as text.

    Returns, without duplicates and in this order: the template's ``stop_str`` (if any); its separator after an
    answer as rendered for ``eos_token`` (``"<|im_end|>"`` for SmolLM2); FastChat's literal ``sep2`` (``"</s>"``
    for vicuna_v1.1, for models trained on FastChat's text); and the user role marker (``"USER:"``), which a
    model that runs on would write to start the next turn. With ``eos_token`` ``None`` or ``"</s>"``:
    ``["</s>", "USER:"]`` for vicuna_v1.1.

    Raises:
        ValueError: unknown template, or a bad ``eos_token`` (see :func:`with_eos`).
    """
    tmpl = get_template(template_name)
    candidates: Iterable[str | None] = (tmpl.stop_str, with_eos(tmpl, eos_token).sep2, tmpl.sep2, tmpl.roles[0] + ":")
    out: list[str] = []
    for s in candidates:
        if s and s not in out:
            out.append(s)
    return out
