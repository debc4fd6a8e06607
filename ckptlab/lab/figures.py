"""One look for every figure of the lessons, readable by everyone.

* **Palette.** The Okabe-Ito colours (:data:`OKABE_ITO`), safe for the common colour-vision
  deficiencies, with a role for each recurring series (:data:`ROLE`: the uninterrupted run is
  always the wide grey line, the resumed run blue, a killed attempt orange, ...). Colour is
  never the only cue: lines that colour separates also differ in style or marker
  (:data:`LINESTYLES`, :data:`MARKERS`), and bars that colour separates carry a hatch or a
  label (:data:`HATCHES`).
* **Captions.** Every figure carries one data-derived sentence (what it shows and the measured
  fact: "resumed minus uninterrupted: max |difference| = 0 over 4000 steps"), attached with
  :func:`caption` and shown by :func:`figure_view` under the figure *and* as its ``alt`` text,
  so a screen reader, the rendered site and Voilà all read the same sentence.
* **Sizes.** :func:`use_lab_style` sets matplotlib's fonts, ticks and legends to sizes that
  read at 100 % zoom; the presentation style (``CKPTLAB_PRESENTATION=1``, set by
  ``make present``, or ``use_lab_style(presentation=True)`` in JupyterLab) makes them, and the
  page's text and tables, large enough for the back of a room at 1280x720.

How a figure reaches the page: a lab function builds a matplotlib figure, attaches its caption
with :func:`caption`, and returns it; :func:`~ckptlab.lab.widgets.to_displayable` (live
controls) or :func:`show_figure` (a lesson's own cell) turns it into one display output whose
``text/html`` is ``<figure><img alt="CAPTION" src="data:image/png;base64,..."><figcaption>
CAPTION</figcaption></figure>`` and whose output metadata holds ``{"ckptlab": {"caption":
CAPTION}}`` (what the site builder reads).

Introduced in notebook ``01_pipeline_trace``.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine import CkptlabError

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common form of
# colour blindness, and in greyscale by lightness for most pairs.
OKABE_ITO: dict[str, str] = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
GREY = "#8C8C8C"
LIGHT_GREY = "#D9D9D9"

# The series every lesson draws, always in the same colour.
ROLE: dict[str, str] = {
    "reference": GREY,                       # the uninterrupted run: the wide grey line
    "resumed": OKABE_ITO["blue"],            # the run under study (resumed, chosen, ...)
    "discarded": OKABE_ITO["orange"],        # work a crash threw away
    "event": OKABE_ITO["vermillion"],        # a kill, a resume, a deletion
    "checkpoint": "#4D4D4D",                 # a checkpoint saved / kept: dark grey, dotted
    "best": OKABE_ITO["yellow"],             # the best policy
    "second": OKABE_ITO["sky_blue"],         # a second series beside "resumed"
    "third": OKABE_ITO["reddish_purple"],
    "positive": OKABE_ITO["blue"],
    "negative": OKABE_ITO["vermillion"],
    "good": OKABE_ITO["blue"],               # paired with a text label or a hatch, always
    "bad": OKABE_ITO["vermillion"],
}
# The order of the colour cycle (black is kept for axes and text).
CYCLE = [OKABE_ITO[name] for name in ("blue", "orange", "green", "vermillion", "sky_blue",
                                      "reddish_purple", "yellow")]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo"]

PRESENTATION_VARIABLE = "CKPTLAB_PRESENTATION"
CAPTION_ATTRIBUTE = "ckptlab_caption"

# Font sizes (points) for reading at 100 % and for projecting.
_SIZES = {False: {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
                  "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
                  "figure.titlesize": 12, "legend.title_fontsize": 9},
          True: {"font.size": 15, "axes.titlesize": 16, "axes.labelsize": 15,
                 "xtick.labelsize": 14, "ytick.labelsize": 14, "legend.fontsize": 14,
                 "figure.titlesize": 17, "legend.title_fontsize": 14}}

PRESENTATION_CSS = """
/* ckptlab presentation style: legible at 1280x720 from the back of a room */
.jp-RenderedMarkdown, .jp-RenderedHTMLCommon { font-size: 19px; line-height: 1.45; }
.jp-RenderedHTMLCommon h1 { font-size: 2.1em; } .jp-RenderedHTMLCommon h2 { font-size: 1.7em; }
.jp-RenderedHTMLCommon h3 { font-size: 1.4em; }
.jp-RenderedHTMLCommon table, .ckptlab-table { font-size: 18px; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { padding: 4px 10px; }
.ckptlab-caption { font-size: 18px; }
.jupyter-widgets, .widget-label, .widget-readout, .widget-html-content, .widget-button,
.jupyter-button, .widget-dropdown > select, .widget-radio-box label, .widget-checkbox label,
.widget-text input, .widget-textarea textarea { font-size: 18px !important; }
.jupyter-button, .widget-dropdown > select, .widget-text input { height: auto; min-height: 34px; }
.widget-label { min-width: fit-content; }
"""


def presentation_on(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the presentation style applies: ``CKPTLAB_PRESENTATION=1`` (``make present``)."""
    env = os.environ if environ is None else environ
    return env.get(PRESENTATION_VARIABLE, "").strip().lower() in ("1", "on", "yes", "true")


def lab_rc(presentation: bool = False) -> dict[str, Any]:
    """matplotlib settings of the lab style: the palette cycled with line styles (so two lines
    never differ by colour alone), the sizes, and light grid lines."""
    from cycler import cycler

    return {"axes.prop_cycle": cycler(color=CYCLE) + cycler(linestyle=LINESTYLES),
            **_SIZES[bool(presentation)],
            "axes.grid": True, "grid.color": "#E5E5E5", "grid.linewidth": 0.6,
            "axes.axisbelow": True, "axes.spines.top": False, "axes.spines.right": False,
            "figure.dpi": 100, "savefig.dpi": 100, "legend.framealpha": 0.9,
            "image.cmap": "cividis"}


def use_lab_style(presentation: bool | None = None) -> bool:
    """Apply the lab style to this kernel's matplotlib; with the presentation style (default:
    ``CKPTLAB_PRESENTATION``), also enlarge the page's text, tables and controls. Every lesson
    calls it in its setup cell; call ``use_lab_style(presentation=True)`` in JupyterLab to
    switch the presentation style on, then rerun the cells. It also makes the lesson's
    feedback areas ARIA live regions (:func:`ckptlab.lab.a11y.enable_live_regions`). Returns
    whether the presentation style is on."""
    import matplotlib
    from IPython.display import HTML, display

    from .a11y import enable_live_regions

    on = presentation_on() if presentation is None else bool(presentation)
    matplotlib.rcParams.update(lab_rc(on))
    enable_live_regions()
    if on:
        display(HTML(f"<style>{PRESENTATION_CSS}</style>"))
    return on


# --------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------

def caption(figure: Any, text: str) -> Any:
    """Attach ``text`` (one sentence: what the figure shows and the measured fact) to a
    matplotlib figure; return the figure."""
    text = " ".join(str(text).split())
    if not text:
        raise CkptlabError("a figure's caption cannot be empty: say what it shows and what "
                           "was measured")
    setattr(figure, CAPTION_ATTRIBUTE, text)
    return figure


def caption_of(figure: Any) -> str | None:
    """The caption attached to ``figure``, if any."""
    return getattr(figure, CAPTION_ATTRIBUTE, None)


def fmt(value: float, digits: int = 3) -> str:
    """A number for a caption: ``0`` stays ``0``; others with ``digits`` significant digits."""
    return "0" if value == 0 else f"{value:.{digits}g}"


@dataclass(frozen=True)
class FigureView:
    """A rendered figure: its PNG and its caption. Displayed, it is one output - the image
    with the caption as its alt text, and the caption under it."""

    png: bytes
    caption: str

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        text = html.escape(self.caption, quote=True)
        return ("<figure class='ckptlab-figure' style='margin:0 0 0.6em 0'>"
                f"<img src='data:image/png;base64,{data}' alt=\"{text}\" "
                "style='max-width:100%;height:auto'>"
                "<figcaption class='ckptlab-caption' style='font-style:italic;margin:2px 0 "
                f"0 0'>{text}</figcaption></figure>")

    def _repr_mimebundle_(self, include: Any = None,
                          exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"text/html": self.html(), "text/plain": f"[figure] {self.caption}"},
                {"ckptlab": {"caption": self.caption}})


def figure_view(figure: Any, *, tight: bool = True) -> FigureView:
    """Render a captioned matplotlib figure to a :class:`FigureView` and close it (so the
    inline backend does not draw it a second time). ``tight=False`` skips the second draw that
    trims the margins, for figures laid out by hand (it halves a live control's time).

    Raises:
        CkptlabError: the figure has no caption (every lesson figure needs one).
    """
    import matplotlib.pyplot as plt

    text = caption_of(figure)
    if not text:
        titles = "; ".join(ax.get_title() for ax in figure.axes if ax.get_title())
        plt.close(figure)
        raise CkptlabError(f"a lesson figure has no caption ({titles or 'untitled'}): attach "
                           "one with ckptlab.lab.figures.caption(fig, text)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(figure)
    return FigureView(buffer.getvalue(), text)


def show_figure(figure: Any, text: str | None = None) -> FigureView:
    """Display a lesson's figure with its caption (given here, or attached before), once."""
    from IPython.display import display

    if text is not None:
        caption(figure, text)
    view = figure_view(figure)
    display(view)
    return view
