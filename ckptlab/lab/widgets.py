"""Live controls for the lessons: the learner moves a control and a real package call answers.

The rule every lesson follows: the *work* a control does is a plain, documented, tested
function in the package that returns something displayable (a matplotlib figure, an HTML
table, text, or a list of those). This module only wires controls to that function and shows
what it returns:

1. :func:`show_live` displays one output: the controls, a status line and a live output area
   whose first state is the function's result for the default values; the function's result
   for the current values replaces it whenever a control moves (or a button is pressed, for
   controls that train). So the learner sees one figure per control, never a stale default
   beside the live one - in JupyterLab and in Voila alike;
2. that same output also carries the default result as static HTML (as the quiz does), which
   is what a notebook run headless (nbval, papermill), the rendered site and a code host show,
   since they cannot run widgets.

Every figure is shown with its caption under it and as its alt text (:mod:`.figures`); the
status line is a polite ARIA live region (:mod:`.a11y`).

Errors inside a callback are shown in the live output area (a :class:`~ckptlab.CkptlabError` as
its one-line message, anything else with its traceback); ipywidgets would otherwise hide them.
"""

from __future__ import annotations

import html
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..engine import CkptlabError
from .a11y import mark_live
from .figures import figure_view


def to_displayable(result: Any) -> list[Any]:
    """Turn a render function's result into objects ``IPython.display`` shows everywhere.

    Figures become :class:`~ckptlab.lab.figures.FigureView` objects - the image with its
    caption under it and as its alt text - and are closed, so nothing is drawn twice (a figure
    without a caption is an error); strings become preformatted text; lists and tuples are
    flattened in order.
    """
    from IPython.display import HTML

    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return [item for part in result for item in to_displayable(part)]
    if hasattr(result, "savefig"):  # a matplotlib Figure
        return [figure_view(result)]
    if isinstance(result, str):
        return [HTML(f"<pre>{html.escape(result)}</pre>")]
    return [result]


def static_html(shown: Sequence[Any]) -> str:
    """What displayed objects look like without a kernel: their HTML (or their text), one after
    the other - the static part of a live view's output."""
    parts = []
    for obj in shown:
        bundle = obj._repr_mimebundle_() if hasattr(obj, "_repr_mimebundle_") else None
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, Mapping) and "text/html" in data:
            parts.append(str(data["text/html"]))
        elif hasattr(obj, "_repr_html_") and obj._repr_html_() is not None:
            parts.append(obj._repr_html_())
        else:
            parts.append(f"<pre>{html.escape(str(obj))}</pre>")
    return "".join(parts)


def error_html(exc: BaseException) -> Any:
    """How a failed control shows its error: the message (and, if unexpected, the traceback)."""
    from IPython.display import HTML

    if isinstance(exc, CkptlabError):
        body = html.escape(str(exc))
    else:
        body = html.escape("".join(traceback.format_exception(exc)))
    return HTML("<div class='ckptlab-error' style='border-left:4px solid #dc2626;"
                "padding:4px 10px;background:#fef2f2'><b>error:</b> "
                f"<span style='white-space:pre-wrap'>{body}</span></div>")


class LiveView:
    """Controls wired to a render function, with the live output area below them.

    Args:
        render: called with the controls' values as keyword arguments; returns what to show.
        controls: ``{keyword: widget}``; each widget's ``value`` is passed under its keyword.
        run_button: a label for a button that triggers the render (controls that train);
            ``None`` re-renders on every change (controls that answer instantly).
        hint: one line shown in the live area before the first render.
    """

    def __init__(self, render: Callable[..., Any], controls: Mapping[str, Any], *,
                 run_button: str | None = None,
                 hint: str = "Move a control: the view below is redrawn from a real run.") -> None:
        import ipywidgets as widgets

        self.render, self.controls = render, dict(controls)
        self.output = widgets.Output()
        self.status = mark_live(widgets.HTML(f"<i>{hint}</i>"))
        self.button = widgets.Button(description=run_button, button_style="primary") \
            if run_button else None
        if self.button is not None:
            self.button.on_click(lambda _: self.refresh())
        else:
            for control in self.controls.values():
                control.observe(lambda _: self.refresh(), names="value")
        row = list(self.controls.values()) + ([self.button] if self.button else [])
        self.widget = widgets.VBox([widgets.HBox(row, layout=widgets.Layout(flex_flow="row wrap")),
                                    self.status, self.output])
        self.renders = 0
        self.last_error: BaseException | None = None
        self.default_html = ""

    def show_default(self) -> None:
        """Render the current (default) values as the live area's first state, and keep their
        static HTML for viewers without a kernel. Errors propagate: a default that cannot be
        drawn is a bug of the lesson, not a learner's choice."""
        shown = to_displayable(self.render(**self.values()))
        self.output.outputs = ()
        for obj in shown:
            self.output.append_display_data(obj)
        self.default_html = static_html(shown)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget in a kernel; the default result as static HTML elsewhere."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        data["text/html"] = self.default_html
        data["text/plain"] = "live view (interactive in a running kernel)"
        return data

    def values(self) -> dict[str, Any]:
        """The current value of every control, by keyword."""
        return {name: control.value for name, control in self.controls.items()}

    def refresh(self) -> None:
        """Render the current values into the live area; show any error there."""
        if self.button is not None:
            self.button.disabled = True
            self.status.value = "<i>running…</i>"
        started = time.perf_counter()
        try:
            shown = to_displayable(self.render(**self.values()))
            self.last_error = None
        except Exception as exc:  # shown to the learner in the output area, never swallowed
            shown = [error_html(exc)]
            self.last_error = exc
        finally:
            if self.button is not None:
                self.button.disabled = False
        self.output.outputs = ()
        for obj in shown:
            self.output.append_display_data(obj)
        self.renders += 1
        took = time.perf_counter() - started
        self.status.value = (f"<i>updated in {took:.1f} s</i>" if self.last_error is None
                             else "<i>that did not work; see the message below</i>")


def show_live(render: Callable[..., Any], controls: Mapping[str, Any], *,
              run_button: str | None = None, hint: str | None = None) -> LiveView:
    """Display the live controls with ``render``'s default result as the live area's first
    state (and, for viewers without a kernel, as static HTML in the same output).

    Returns the :class:`LiveView`, so a test can set values and call ``refresh()``.
    """
    from IPython.display import display

    from .a11y import enable_live_regions

    view = LiveView(render, controls, run_button=run_button,
                    **({"hint": hint} if hint is not None else {}))
    view.show_default()
    enable_live_regions()   # its status line becomes a live region, its slider named
    display(view)
    return view


def labelled(options: Sequence[Any] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Options for a dropdown or toggle, as ``(label, value)`` pairs."""
    if isinstance(options, Mapping):
        return list(options.items())
    return [(str(o), o) for o in options]
