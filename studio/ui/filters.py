"""The conversation filter as page controls: one reusable component, built from ``studio.filters.FILTER_FIELDS``
(labels, kinds and fixed choices come from that one declaration), turning control values into a ``ConvFilter``
with ``studio.filters.filter_from_mapping``.

The Data tab (its table, bulk actions, quality filters, statistics and export) uses it; the Train tab can use
it the same way. API:

``FilterControls.build(studio, *, fields=None, defaults=None, elem_prefix="data", per_row=6) -> FilterControls``
    Lay out the controls of ``fields`` (``FilterField`` names, in the given order; default: every field) in rows
    of ``per_row`` inside the current Blocks context. ``defaults`` gives starting values in the filter's terms
    (``{"status": "new", "min_rounds": 2}``); unset fields start open ("all", "any", empty).

``FilterControls(studio, *, defaults=None, elem_prefix="data")`` then ``.render(name, **kwargs)``
    Place controls one at a time where a tab's layout wants them (the Data tab puts the search box beside its
    button and the ranges in an accordion); ``kwargs`` go to the Gradio component (``scale``, ``show_label``,
    ``placeholder``, ``label``...).

Attributes and methods of a ``FilterControls``:

- ``inputs``: the rendered components, in render order (use as an event's ``inputs``, or inside a set of
  inputs: Gradio then passes one ``{component: value}`` dict).
- ``fc[name]``: the component of one field (e.g. ``fc["source_id"]``).
- ``triggers``: each control's natural event (a choice changed; Enter in a number or text box), for
  ``gr.on(triggers=fc.triggers, ...)``.
- ``to_filter(*values) -> ConvFilter``: from the values of ``inputs`` in order, or from one
  ``{component: value}`` dict. A 0 in a range box means no bound (Gradio sends an empty Number as 0). Raises
  ``ValueError`` whose message names the control, e.g. ``Min rounds (min_rounds): the minimum (5) is above the
  maximum (2)``; ``common.friendly`` shows it as a toast and nothing on the page changes.
- ``refresh(studio=None) -> dict``: ``{component: gr.update(choices=...)}`` with fresh source, teacher and tag
  choices from the store (e.g. after an import, an expansion or a bulk tag), for a handler's dict return;
  ``choice_outputs`` lists those components (an event's ``outputs``). Chosen values are kept.

Element ids are ``{elem_prefix}-{option}``, the option being the command-line spelling without dashes
(``data-source``, ``data-status``, ``data-min-rounds``, ``data-search`` for the text search, ``data-edited``),
except ``{elem_prefix}-tags`` for the tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gradio as gr

from ..filters import FIELDS_BY_NAME, FILTER_FIELDS, ConvFilter, FilterError, FilterField, filter_from_mapping

ELEM_SUFFIX = {f.name: f.option.split("/")[0].lstrip("-") for f in FILTER_FIELDS} | {"tags": "tags"}
"""Field name -> element id suffix (``{elem_prefix}-{suffix}``)."""

ANY_SOURCE, ANY_TEACHER = ("All sources", 0), ("Any teacher", "")
"""The "no condition" entries of the source and teacher drop-downs."""


def store_choices(studio, field: FilterField) -> list:
    """The current choices of a field whose choices come from the data (``field.choices_from``), as a
    drop-down takes them: sources ``[(label, id)]`` after "All sources" (value 0), teachers ``[(name, name)]``
    after "Any teacher" (value ""), tags ``[name]`` (most used first).

    Raises:
        ValueError: the field has fixed choices or none.
    """
    store = studio.store
    if field.choices_from == "source_choices":
        return [ANY_SOURCE] + list(store.source_choices())
    if field.choices_from == "teachers":
        return [ANY_TEACHER] + [(t, t) for t in store.teachers()]
    if field.choices_from == "list_tags":
        return [t for t, _ in store.list_tags()]
    raise ValueError(f"filter field '{field.name}' takes no choices from the store")


def open_value(field: FilterField) -> Any:
    """The control value that leaves ``field`` open ("all", "any", empty)."""
    if field.choices_from == "source_choices":
        return ANY_SOURCE[1]
    if field.choices_from == "teachers":
        return ANY_TEACHER[1]
    if field.kind == "tags":
        return []
    if field.kind == "text":
        return ""
    return field.default   # "all"/"any" for fixed choices, None for numbers


class FilterControls:
    """The controls of some ``ConvFilter`` fields on the page (see the module docstring for the API).

    Args:
        studio: the ``Studio`` whose store gives source, teacher and tag choices.
        defaults: starting values by field name, in the filter's terms (``{"status": "new"}``).
        elem_prefix: element ids are ``{elem_prefix}-{option}`` (``data-min-rounds``).

    Raises:
        ValueError: an unknown field name in ``defaults`` or ``render``.
    """

    def __init__(self, studio, *, defaults: Mapping[str, Any] | None = None, elem_prefix: str = "data"):
        unknown = sorted(set(defaults or {}) - set(FIELDS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown filter field '{unknown[0]}' (known: {', '.join(FIELDS_BY_NAME)})")
        self.studio = studio
        self.defaults = dict(defaults or {})
        self.elem_prefix = elem_prefix
        self.components: dict[str, gr.components.Component] = {}

    @classmethod
    def build(cls, studio, *, fields: Iterable[str] | None = None, defaults: Mapping[str, Any] | None = None,
              elem_prefix: str = "data", per_row: int = 6) -> "FilterControls":
        """Lay out the controls of ``fields`` (default: all of ``FILTER_FIELDS``) in rows of ``per_row``."""
        fc = cls(studio, defaults=defaults, elem_prefix=elem_prefix)
        names = list(fields) if fields is not None else [f.name for f in FILTER_FIELDS]
        for k in range(0, len(names), max(1, per_row)):
            with gr.Row():
                for name in names[k:k + per_row]:
                    fc.render(name)
        return fc

    # ------------------------------------------------------------------------------------------ layout
    def render(self, name: str, **kwargs) -> gr.components.Component:
        """Create the control of field ``name`` here; ``kwargs`` override the Gradio component's arguments.

        Raises:
            ValueError: an unknown field, or one rendered twice.
        """
        if name not in FIELDS_BY_NAME:
            raise ValueError(f"unknown filter field '{name}' (known: {', '.join(FIELDS_BY_NAME)})")
        if name in self.components:
            raise ValueError(f"filter field '{name}' is already on the page")
        f = FIELDS_BY_NAME[name]
        value = self.defaults.get(name, open_value(f))
        args: dict[str, Any] = {"label": f.label, "elem_id": f"{self.elem_prefix}-{ELEM_SUFFIX[name]}"}
        if f.kind == "choice":
            comp_cls = gr.Dropdown
            args["choices"] = list(f.choices) if f.choices else store_choices(self.studio, f)
        elif f.kind == "tags":
            comp_cls = gr.Dropdown
            args.update(choices=store_choices(self.studio, f), multiselect=True, allow_custom_value=True,
                        label=f"{f.label} (any of)")
        elif f.kind == "number":
            comp_cls = gr.Number
            args.update(precision=0, minimum=0)
            if name.startswith("max_") or name == "job_id":
                args["label"] = f"{f.label} (0 = any)"
        else:
            comp_cls = gr.Textbox
            args.update(max_lines=1)
            if name == "ids":
                args["placeholder"] = "3,5,9-12"
        args.update(kwargs)
        comp = comp_cls(value=value, **args)
        self.components[name] = comp
        return comp

    def __getitem__(self, name: str) -> gr.components.Component:
        return self.components[name]

    @property
    def names(self) -> list[str]:
        """The rendered fields' names, in render order (the order of ``inputs``)."""
        return list(self.components)

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The rendered components, in render order."""
        return list(self.components.values())

    @property
    def triggers(self) -> list:
        """Each control's natural event: ``change`` of a drop-down, ``submit`` (Enter) of a number or text box
        (typing alone doesn't reload a table of 70k rows)."""
        return [c.change if isinstance(c, gr.Dropdown) else c.submit for c in self.components.values()]

    @property
    def choice_outputs(self) -> list[gr.components.Component]:
        """The components whose choices ``refresh`` updates (source, teacher, tags, where rendered)."""
        return [c for n, c in self.components.items() if FIELDS_BY_NAME[n].choices_from]

    # ------------------------------------------------------------------------------------------ values
    def values(self, *values) -> dict[str, Any]:
        """``{field name: control value}`` from the values of ``inputs`` in order, or from one
        ``{component: value}`` dict (a set of inputs).

        Raises:
            ValueError: a wrong number of values, or a dict missing one of the controls.
        """
        if len(values) == 1 and isinstance(values[0], Mapping):
            given = values[0]
            missing = [n for n, c in self.components.items() if c not in given]
            if missing:
                raise ValueError(f"the event's inputs lack the filter control(s) {', '.join(missing)}")
            return {n: given[c] for n, c in self.components.items()}
        if len(values) != len(self.components):
            raise ValueError(f"expected {len(self.components)} filter values ({', '.join(self.names)}), "
                             f"got {len(values)}")
        return dict(zip(self.components, values))

    def to_filter(self, *values) -> ConvFilter:
        """The ``ConvFilter`` of the controls' values (``values`` as for ``values``); a 0 in a range box is no
        bound.

        Raises:
            ValueError: a value the filter refuses; the message names the control by label and field, e.g.
                ``Min rounds (min_rounds): expected a whole number >= 0, not -3``.
        """
        try:
            return filter_from_mapping(self.values(*values), zero_means_any=True)
        except FilterError as e:
            label = FIELDS_BY_NAME[e.field].label if e.field in FIELDS_BY_NAME else e.field
            detail = str(e).removeprefix(f"filter field '{e.field}': ")
            raise ValueError(f"{label} ({e.field}): {detail}") from e

    def refresh(self, studio=None) -> dict:
        """``{component: gr.update(choices=...)}`` with the store's current source, teacher and tag choices for
        the rendered ones (chosen values are kept)."""
        studio = studio or self.studio
        return {c: gr.update(choices=store_choices(studio, FIELDS_BY_NAME[n]))
                for n, c in self.components.items() if FIELDS_BY_NAME[n].choices_from}
