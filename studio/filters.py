"""The one conversation filter: which conversations a list, count, export, bulk action, quality run or training
snapshot covers, and the declaration of its fields that the Data tab, the Train tab and the command line build
their controls from.

- ``ConvFilter``: the filter itself (a dataclass; the store turns it into SQL, ``studio.store.conversations``).
- ``FILTER_FIELDS``: one ``FilterField`` per filter field, in display order: name, label, kind (``choice``,
  ``number``, ``text``, ``tags``), fixed choices, help text, command-line option.
- ``STATUS_CHOICES``, ``ORIGIN_CHOICES``, ``EDITED_CHOICES``, ``FLAGGED_CHOICES``: ``(label, value)`` pairs
  (the shape Gradio's ``Dropdown(choices=...)`` takes); ``*_VALUES`` are their values (``argparse`` choices).
- ``filter_from_mapping``: a ``ConvFilter`` from a dict of field values (page controls, a saved run config),
  checked, with errors that name the field.
- ``parse_ids``: the one id-list parser (``"3,5,9-12"``).
- ``ConvFilter.for_training``: the training rule (flagged and deleted conversations stay out unless chosen).

Nothing here runs SQL.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

STATUSES = ("new", "edited")
"""Conversation review statuses; a deleted conversation keeps its status and gets ``deleted_at``."""

ORIGINS = ("imported", "expanded", "split", "arena")
"""Where a stored conversation came from: ``imported`` from a file, ``expanded`` by a teacher (an expansion job,
or added by hand), ``split`` from a long conversation by the quality split (FastChat
``split_long_conversation.py``), or kept from an ``arena`` round (the winning answer). The store refuses any
other origin."""

STATUS_CHOICES = (("All (not deleted)", "all"), ("New", "new"), ("Edited", "edited"), ("Flagged", "flagged"),
                  ("Deleted", "deleted"))
"""The ``status`` filter: ``all`` = every conversation not deleted; ``flagged`` = has a flag (not deleted);
``deleted`` = only the deleted ones."""

ORIGIN_CHOICES = (("All origins", "all"),) + tuple((o.capitalize(), o) for o in ORIGINS)
EDITED_CHOICES = (("Any", "any"), ("Edited", "yes"), ("Never edited", "no"))
FLAGGED_CHOICES = (("Any", "any"), ("Flagged", "yes"), ("Not flagged", "no"))
CUT_CHOICES = (("Any", "any"), ("Cut at the token limit", "yes"), ("Not cut", "no"))
"""The ``cut`` filter: an answer stopped at the teacher's ``max_new_tokens`` (finish reason ``length``)."""

STATUS_VALUES = tuple(v for _, v in STATUS_CHOICES)
ORIGIN_VALUES = tuple(v for _, v in ORIGIN_CHOICES)
EDITED_VALUES = tuple(v for _, v in EDITED_CHOICES)
FLAGGED_VALUES = tuple(v for _, v in FLAGGED_CHOICES)
CUT_VALUES = tuple(v for _, v in CUT_CHOICES)

MAX_ID_RANGE = 1_000_000
"""The longest range ``parse_ids`` expands (``1-1000001`` is refused)."""


class FilterError(ValueError):
    """A filter value was refused. ``field`` names the filter field (``ConvFilter`` attribute) at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"filter field '{field}': {message}")
        self.field = field


@dataclass
class ConvFilter:
    """Which conversations a list, count, export, bulk action or training snapshot covers.

    All given conditions must hold; ``None`` (or ``"all"``) leaves a field open. See ``FILTER_FIELDS`` for the
    fields' labels and help, and ``filter_from_mapping`` to build one from control values.

    Attributes:
        source_id, job_id: exact matches (None = any).
        status: ``all``/None (not deleted), ``new``, ``edited``, ``flagged``, or ``deleted``.
        origin: one of ``ORIGINS`` (None/``all`` = any); teacher: exact teacher name.
        tags: any of these tags.
        min_rounds..max_rounds, min_tokens..max_tokens, min_chars..max_chars: inclusive ranges (None = open).
            Token counts exist after ``Store.set_token_counts`` (the studio counts them after an import).
        edited: True = edited at least once, False = never edited.
        flagged: True = has a flag, False = has none.
        cut: True = an answer was cut at the token limit when it was generated (an expansion's
            ``gen_params.finish_reasons`` holds ``length``), False = none was.
        query: full-text search over message text (every word must match; "quoted phrases").
        ids: restrict to these ids.
    """

    source_id: int | None = None
    status: str | None = None
    origin: str | None = None
    job_id: int | None = None
    teacher: str | None = None
    tags: list[str] | None = None
    min_rounds: int | None = None
    max_rounds: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    edited: bool | None = None
    flagged: bool | None = None
    cut: bool | None = None
    query: str | None = None
    ids: list[int] | None = None

    def describe(self) -> str:
        """Short human description of the filter, e.g. for a dataset card (``all conversations`` if empty)."""
        parts = [f"{k}={v}" for k, v in self.__dict__.items() if v not in (None, "", "all", []) and k != "ids"]
        if self.ids is not None:
            parts.append(f"{len(self.ids)} chosen ids")
        return ", ".join(parts) or "all conversations"

    def for_training(self) -> "ConvFilter":
        """The training rule, in one place: a copy of this filter that leaves out flagged and deleted
        conversations, unless the filter chose them explicitly (``status`` ``flagged`` or ``deleted``, or
        ``flagged=True``). Deleted ones are already out unless ``status="deleted"``; so this only adds
        ``flagged=False`` when neither ``status`` nor ``flagged`` asked for flagged ones."""
        out = dataclasses.replace(self, tags=list(self.tags) if self.tags else self.tags,
                                  ids=list(self.ids) if self.ids is not None else None)
        if self.status not in ("flagged", "deleted") and self.flagged is not True:
            out.flagged = False
        return out

    def to_mapping(self) -> dict[str, Any]:
        """The fields that are set (not None/empty/``all``), e.g. to save in a run config;
        ``filter_from_mapping(f.to_mapping()) == f`` up to ``"all"`` becoming None."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()
                if v not in (None, "", "all") and not (isinstance(v, list) and not v and k != "ids")}


@dataclass(frozen=True)
class FilterField:
    """How one ``ConvFilter`` field is shown and entered (one declaration for the page and the command line).

    Attributes:
        name: the ``ConvFilter`` attribute (and key of ``filter_from_mapping``).
        label: what a control shows.
        kind: ``choice`` (one of ``choices``, or of a list the store gives: ``choices_from``), ``number`` (a
            whole number >= 0; ``None``/empty = open), ``text`` (free text; ``ids`` is parsed by ``parse_ids``),
            ``tags`` (several names).
        help: one line for a tooltip or ``--help``.
        choices: ``(label, value)`` pairs when fixed; None when they come from the data.
        choices_from: the ``Store`` method listing the choices at run time (``source_choices``, ``teachers``,
            ``list_tags``), or None.
        option: the command-line option (``--source``), with ``--min-rounds`` style names for ranges.
        default: the control's "any" value (what means "no condition").
    """

    name: str
    label: str
    kind: str
    help: str
    choices: tuple[tuple[str, str], ...] | None = None
    choices_from: str | None = None
    option: str | None = None
    default: Any = None

    @property
    def values(self) -> tuple[str, ...] | None:
        """The fixed choices' values (e.g. for ``argparse``'s ``choices=``), or None."""
        return tuple(v for _, v in self.choices) if self.choices else None


def _range(what: str, unit: str, extra: str = "") -> list[FilterField]:
    return [FilterField(f"min_{what}", f"Min {what}", "number", f"at least N {unit}{extra}", option=f"--min-{what}"),
            FilterField(f"max_{what}", f"Max {what}", "number", f"at most N {unit}{extra}", option=f"--max-{what}")]


FILTER_FIELDS: tuple[FilterField, ...] = (
    FilterField("query", "Search", "text", 'full-text search: every word must match; "quoted phrases" match as '
                "phrases", option="--search"),
    FilterField("source_id", "Source", "choice", "imported file (see 'wvstudio sources')",
                choices_from="source_choices", option="--source"),
    FilterField("status", "Status", "choice", "all (default: not deleted), new, edited, flagged, or deleted",
                choices=STATUS_CHOICES, option="--status", default="all"),
    FilterField("origin", "Origin", "choice", "imported from a file, expanded by a teacher, or split from a long "
                "conversation", choices=ORIGIN_CHOICES, option="--origin", default="all"),
    FilterField("teacher", "Teacher", "choice", "model that wrote the conversation", choices_from="teachers",
                option="--teacher"),
    FilterField("tags", "Tags", "tags", "has this tag (several: any of them)", choices_from="list_tags",
                option="--tag"),
    FilterField("job_id", "Job", "number", "written by this expansion job", option="--job"),
    *_range("rounds", "user/assistant rounds"),
    *_range("tokens", "tokens", " (see count-tokens)"),
    *_range("chars", "characters"),
    FilterField("edited", "Edited", "choice", "edited at least once, or never edited", choices=EDITED_CHOICES,
                option="--edited/--not-edited", default="any"),
    FilterField("flagged", "Flagged", "choice", "has a flag (e.g. from a quality filter), or has none",
                choices=FLAGGED_CHOICES, option="--flagged/--not-flagged", default="any"),
    FilterField("cut", "Cut at the token limit", "choice", "an answer stopped at the teacher's max new tokens "
                "(finish reason 'length'), or none did", choices=CUT_CHOICES, option="--cut/--not-cut",
                default="any"),
    FilterField("ids", "Ids", "text", "only these conversation ids, e.g. 3,5,9-12", option="--ids"),
)
"""Every ``ConvFilter`` field, in display order (the same set as the dataclass's fields)."""

FIELDS_BY_NAME = {f.name: f for f in FILTER_FIELDS}
assert set(FIELDS_BY_NAME) == {f.name for f in dataclasses.fields(ConvFilter)}, "FILTER_FIELDS out of step"


def parse_ids(text: str) -> list[int]:
    """``"3,5,9-12"`` -> ``[3, 5, 9, 10, 11, 12]`` (commas or spaces; ranges inclusive; sorted, no repeats).

    Raises:
        ValueError: a part that is not an id or a range, a backwards range, one over ``MAX_ID_RANGE`` ids, or no
            id at all.
    """
    out: set[int] = set()
    for part in re.split(r"[,\s]+", (text or "").strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"'{part}' is not an id or a range like 9-12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi - lo > MAX_ID_RANGE:
            raise ValueError(f"range '{part}' is backwards or too long")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError("no ids given")
    return sorted(out)


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _whole(name: str, v, *, zero_means_any: bool = False) -> int | None:
    if _blank(v):
        return None
    if isinstance(v, bool):
        raise FilterError(name, f"expected a whole number, not {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise FilterError(name, f"expected a whole number, not {v!r}") from None
    if not f.is_integer() or f < 0:
        raise FilterError(name, f"expected a whole number >= 0, not {v!r}")
    n = int(f)
    return None if (zero_means_any and n == 0) else n


def _yes_no(name: str, v) -> bool | None:
    if _blank(v) or v == "any":
        return None
    if isinstance(v, bool):
        return v
    key = str(v).strip().lower()
    table = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if key not in table:
        raise FilterError(name, f"expected any, yes or no, not {v!r}")
    return table[key]


def _choice(name: str, v, values: tuple[str, ...]) -> str | None:
    if _blank(v) or v == "all":
        return None
    if v not in values:
        raise FilterError(name, f"{v!r} is not one of {', '.join(values)}")
    return v


def filter_from_mapping(values: Mapping[str, Any], *, zero_means_any: bool = False) -> ConvFilter:
    """A ``ConvFilter`` from a dict of field values, as controls give them (keys: ``FILTER_FIELDS`` names).

    Accepted values: None, ``""`` and ``"all"``/``"any"`` leave a field open; numbers may be strings or floats
    that are whole; ``edited``/``flagged``/``cut`` take a bool or ``yes``/``no``/``any``; ``tags`` a list or a comma
    separated string; ``ids`` a list of ints or text for ``parse_ids``; ``source_id``/``job_id`` an int (0 means
    any source, as an empty drop-down gives).

    Args:
        zero_means_any: a 0 in a range box means no bound (Gradio shows and sends an empty Number as 0).

    Raises:
        FilterError (a ValueError): an unknown field, or a bad value; the message names the field, e.g.
            ``filter field 'min_rounds': expected a whole number >= 0, not 'x'``; also a min above its max.
    """
    unknown = sorted(set(values) - set(FIELDS_BY_NAME))
    if unknown:
        raise FilterError(unknown[0], f"unknown filter field (known: {', '.join(FIELDS_BY_NAME)})")
    out: dict[str, Any] = {}
    for name, v in values.items():
        if name in ("source_id", "job_id"):
            out[name] = _whole(name, v, zero_means_any=True)
        elif name.startswith(("min_", "max_")):
            out[name] = _whole(name, v, zero_means_any=zero_means_any)
        elif name == "status":
            out[name] = _choice(name, v, STATUS_VALUES)
        elif name == "origin":
            out[name] = _choice(name, v, ORIGIN_VALUES)
        elif name in ("edited", "flagged", "cut"):
            out[name] = _yes_no(name, v)
        elif name == "tags":
            tags = v.split(",") if isinstance(v, str) else list(v or [])
            if not all(isinstance(t, str) for t in tags):
                raise FilterError(name, f"expected tag names, not {v!r}")
            out[name] = [t.strip() for t in tags if t.strip()] or None
        elif name == "ids":
            if _blank(v):
                out[name] = None
            elif isinstance(v, str):
                try:
                    out[name] = parse_ids(v)
                except ValueError as e:
                    raise FilterError(name, str(e)) from None
            else:
                out[name] = [_whole(name, i) for i in v]
        else:  # query, teacher: free text
            if not _blank(v) and not isinstance(v, str):
                raise FilterError(name, f"expected text, not {v!r}")
            out[name] = None if _blank(v) else v.strip()
    for what in ("rounds", "tokens", "chars"):
        lo, hi = out.get(f"min_{what}"), out.get(f"max_{what}")
        if lo is not None and hi is not None and lo > hi:
            raise FilterError(f"min_{what}", f"the minimum ({lo}) is above the maximum ({hi})")
    return ConvFilter(**out)
