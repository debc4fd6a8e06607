"""Figures everyone can read: every figure of every committed lesson is one captioned output (the
caption under the image and as its alt text), the lab figures draw from one colour-blind-safe
palette, and series that colour separates also differ in line style."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from ckptlab.engine import CkptlabError  # noqa: E402
from ckptlab.lab.figures import (  # noqa: E402
    CYCLE,
    OKABE_ITO,
    FigureView,
    caption,
    figure_view,
    lab_rc,
)
from ckptlab.lab.widgets import to_displayable  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FIGURE = re.compile(r"<figure class='ckptlab-figure'.*?</figure>", re.S)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_committed_figure_is_captioned(notebook):
    nb = json.loads(notebook.read_text("utf-8"))
    for n, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            assert "image/png" not in data, (f"cell {n}: a figure without a caption (show it "
                                             "with ckptlab.lab.figures.show_figure)")
            page = "".join(data.get("text/html", ""))
            for img in re.findall(r"<img\b[^>]*>", page):
                alt = re.search(r"alt=\"([^\"]*)\"", img)
                assert alt and alt.group(1).strip(), f"cell {n}: an image without alt text"
            for figure in FIGURE.findall(page):
                alt = html.unescape(re.search(r"alt=\"([^\"]*)\"", figure).group(1))
                text = html.unescape(re.search(r"<figcaption[^>]*>(.*?)</figcaption>",
                                               figure, re.S).group(1))
                assert alt == text, f"cell {n}: the alt text is not the caption"


def test_a_figure_is_one_output_with_its_caption_as_alt_and_metadata():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    (view,) = to_displayable(caption(fig, "A line: max |difference| = 0 over 2 points."))
    assert isinstance(view, FigureView) and view.png.startswith(b"\x89PNG")
    data, metadata = view._repr_mimebundle_()
    assert set(data) == {"text/html", "text/plain"}
    assert 'alt="A line: max |difference| = 0 over 2 points."' in data["text/html"]
    assert "<figcaption" in data["text/html"]
    assert metadata == {"ckptlab": {"caption": "A line: max |difference| = 0 over 2 points."}}
    assert fig.number not in plt.get_fignums(), \
        "the figure was not closed (the inline backend would redraw it)"


def test_a_figure_without_a_caption_is_refused():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title("untitled work")
    with pytest.raises(CkptlabError, match="no caption"):
        figure_view(fig)
    with pytest.raises(CkptlabError, match="cannot be empty"):
        caption(plt.figure(), "  ")
    plt.close("all")


def test_one_colour_blind_safe_palette_with_line_styles():
    assert set(CYCLE) <= set(OKABE_ITO.values())
    cycle = list(lab_rc()["axes.prop_cycle"])
    assert len({c["linestyle"] for c in cycle}) == len(cycle), \
        "lines that colour separates must differ in style too"
    # presentation sizes are larger than reading sizes, and nothing is below 9 pt
    small, large = lab_rc(False), lab_rc(True)
    for key in ("xtick.labelsize", "ytick.labelsize", "legend.fontsize", "axes.titlesize"):
        assert 9 <= small[key] < large[key]


def _near_grey(colour: str) -> bool:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return max(r, g, b) - min(r, g, b) <= 0x20


def test_plots_use_only_the_palette_or_greys():
    """Hex colours given to matplotlib (``color=``, ``facecolor=``, ``edgecolor=``) in the lab's
    plotting code and the lessons' cells are Okabe-Ito colours or greys."""
    palette = {c.lower() for c in OKABE_ITO.values()}
    sources = [(p.name, p.read_text("utf-8")) for p in (REPO / "ckptlab" / "lab").glob("*.py")]
    for notebook in NOTEBOOKS:
        for cell in json.loads(notebook.read_text("utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                sources.append((notebook.name, "".join(cell["source"])))
    wrong = []
    for name, text in sources:
        for match in re.finditer(r"(?:face|edge)?colou?r=\"(#[0-9A-Fa-f]{6})\"", text):
            colour = match.group(1).lower()
            if colour not in palette and not _near_grey(colour):
                wrong.append((name, colour))
        wrong += [(name, m) for m in re.findall(r"\"tab:[a-z]+\"", text)]
    assert not wrong, f"colours outside the palette: {wrong}"
