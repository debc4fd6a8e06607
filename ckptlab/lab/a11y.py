"""Feedback that a screen reader announces.

Quiz, recall, prediction and exercise feedback, and the status line of every live control, are
written into ipywidgets ``HTML`` widgets marked with the class :data:`LIVE_CLASS`. ipywidgets
cannot set ARIA attributes from Python, so :func:`live_region_script` - displayed once per lesson
by :func:`ckptlab.lab.figures.use_lab_style` - gives each such widget, as soon as it appears in
the page, ``role="status"``, ``aria-live="polite"`` and ``aria-atomic="true"``. The attributes
sit on the widget's outer element, which stays in place while its content is replaced, so every
new message is announced (a live region must exist before its content changes). Each message
also carries its own ``role="status"`` wrapper (:func:`announce`), so the region is marked even
where scripts do not run; an exercise's verdict (an ordinary output) is wrapped the same way,
and the output area it appears in becomes a live region too, for the next run of the cell.

Introduced in notebook ``01_pipeline_trace``.
"""

from __future__ import annotations

LIVE_CLASS = "ckptlab-live"
EXERCISE_CLASS = "ckptlab-exercise-result"

_SCRIPT = """
(function () {
  if (window.__ckptlabLiveRegions) { window.__ckptlabLiveRegions(); return; }
  function mark() {
    document.querySelectorAll('.%(live)s:not([aria-live])').forEach(function (el) {
      el.setAttribute('role', 'status');
      el.setAttribute('aria-live', 'polite');
      el.setAttribute('aria-atomic', 'true');
    });
    document.querySelectorAll('.%(exercise)s').forEach(function (el) {
      var area = el.closest('.jp-OutputArea') || el.parentElement;
      if (area && !area.hasAttribute('aria-live')) {
        area.setAttribute('aria-live', 'polite');
      }
    });
  }
  var pending = false;
  window.__ckptlabLiveRegions = mark;
  mark();
  new MutationObserver(function () {
    if (pending) { return; }
    pending = true;
    window.requestAnimationFrame(function () { pending = false; mark(); });
  }).observe(document.body, {childList: true, subtree: true});
})();
""" % {"live": LIVE_CLASS, "exercise": EXERCISE_CLASS}


def live_region_script() -> str:
    """The JavaScript that turns every ``.ckptlab-live`` widget into a polite live region
    (idempotent: displaying it twice installs one observer)."""
    return _SCRIPT


def mark_live(widget: object) -> object:
    """Mark an ipywidgets widget (an ``HTML`` feedback area, a status line) as a live region;
    return it."""
    widget.add_class(LIVE_CLASS)  # type: ignore[attr-defined]
    return widget


def announce(html_text: str) -> str:
    """Wrap a message so that it is a status message even where no script runs."""
    return f"<div role='status'>{html_text}</div>" if html_text else ""


def enable_live_regions() -> None:
    """Display :func:`live_region_script` (a lesson's setup cell does it through
    ``use_lab_style``)."""
    from IPython.display import Javascript, display

    display(Javascript(_SCRIPT))
