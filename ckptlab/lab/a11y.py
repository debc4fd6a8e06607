"""Feedback that a screen reader announces.

Quiz, recall, prediction and exercise feedback, and the status line of every live control, are
written into ipywidgets ``HTML`` widgets marked with the class :data:`LIVE_CLASS`. ipywidgets
cannot set ARIA attributes from Python, so :func:`live_region_script` - displayed once per lesson
by :func:`ckptlab.lab.figures.use_lab_style` - gives each such widget, as soon as it appears in
the page, ``role="status"``, ``aria-live="polite"`` and ``aria-atomic="true"``. The attributes
sit on the widget's outer element, which stays in place while its content is replaced, so every
new message is announced (a live region must exist before its content changes). An exercise's
verdict, an ordinary output, carries ``role="status"`` itself, and the output area it appears in
becomes a live region too, for the next run of the cell.
The same script names what ipywidgets leaves unnamed for a screen reader: each slider handle
(after its label) and each icon-only Play button.

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
    // ipywidgets draws a slider's handle (role=slider) without a name: name it after the
    // widget's label, and the editable readout after it too.
    document.querySelectorAll('.widget-slider').forEach(function (w) {
      var label = w.querySelector('.widget-label');
      var name = label ? label.textContent.trim() : '';
      if (!name) { return; }
      w.querySelectorAll('.noUi-handle:not([aria-label])').forEach(function (h) {
        h.setAttribute('aria-label', name);
      });
      w.querySelectorAll('.widget-readout:not([aria-label])').forEach(function (r) {
        r.setAttribute('aria-label', name + ' (type a value)');
      });
    });
    // Play buttons show only an icon: say what each does.
    var icons = {'fa-play': 'play', 'fa-pause': 'pause', 'fa-stop': 'stop',
                 'fa-retweet': 'repeat'};
    document.querySelectorAll('.widget-play button:not([aria-label])').forEach(function (b) {
      Object.keys(icons).forEach(function (icon) {
        if (b.querySelector('.' + icon)) { b.setAttribute('aria-label', icons[icon]); }
      });
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


def enable_live_regions() -> None:
    """Display :func:`live_region_script` (a lesson's setup cell does it through
    ``use_lab_style``)."""
    from IPython.display import Javascript, display

    display(Javascript(_SCRIPT))
