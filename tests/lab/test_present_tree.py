"""tools/present.py (`make present`): the curated tree holds every lesson and never the
solutions, a lesson's link to them is plain text there, pictures are at hand, every lesson
calls use_lab_style (which switches the presentation style on), and Voila is asked to pre-run
the lessons in the presentation style with no progress recorded."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import present  # noqa: E402


def test_the_tree_holds_the_lessons_and_never_the_solutions(tmp_path):
    served = present.build_tree(REPO / "notebooks", tmp_path / "tree")
    on_disk = sorted(p.name for p in (tmp_path / "tree").glob("*.ipynb"))
    assert served == on_disk and "solutions.ipynb" not in on_disk
    lessons = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert on_disk == lessons
    text = "".join((tmp_path / "tree" / name).read_text() for name in on_disk)
    assert "solutions.ipynb" not in text, "a link to the solutions would only 404"
    assert "](../docs/" not in text and (tmp_path / "tree" / "docs").is_dir()
    start = json.loads((tmp_path / "tree" / "00_start_here.ipynb").read_text())
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)",
                          "".join(cell["source"] for cell in start["cells"]
                                  if cell["cell_type"] == "markdown"))
    assert pictures and all((tmp_path / "tree" / src).exists() for src in pictures)


def test_a_solution_link_becomes_plain_text():
    assert present._strip_solution_links(
        "worked solutions are in [the solutions notebook](solutions.ipynb).") == \
        "worked solutions are in the solutions notebook (not served in the presentation)."


def test_voila_pre_runs_the_chosen_lessons(tmp_path):
    every = present.voila_command(tmp_path, None, 8866, None)
    assert "--preheat_kernel=True" in every
    config = json.loads(next(a for a in every if "kernel_pools_config" in a).split("=", 1)[1])
    assert config == {"default": {"pool_size": 1}}
    some = present.voila_command(tmp_path, None, 8866, ["04_interrupt_and_resume.ipynb"])
    config = json.loads(next(a for a in some if "kernel_pools_config" in a).split("=", 1)[1])
    assert config == {"default": {"pool_size": 0}, "04_interrupt_and_resume.ipynb":
                      {"pool_size": 1}}
    assert not any("preheat" in a for a in present.voila_command(tmp_path, None, 8866, []))
    assert present.voila_command(tmp_path, "04_interrupt_and_resume.ipynb", 9000, [])[3] == \
        str(tmp_path / "04_interrupt_and_resume.ipynb")


def test_presented_kernels_use_the_presentation_style_and_record_nothing():
    env = present.kernel_environment({"PATH": "/bin", "CKPTLAB_PROGRESS": "on"})
    assert env["CKPTLAB_PRESENTATION"] == "1" and env["CKPTLAB_PROGRESS"] == "off"
    assert env["PATH"] == "/bin"


def test_a_lesson_is_named_by_number_stem_or_file():
    served = ["00_start_here.ipynb", "04_interrupt_and_resume.ipynb"]
    for name in ("04", "04_interrupt_and_resume", "04_interrupt_and_resume.ipynb"):
        assert present.resolve(name, served) == "04_interrupt_and_resume.ipynb"


def test_every_served_lesson_calls_use_lab_style():
    """The presentation style is switched on by the lesson itself: a page that never calls
    use_lab_style is served in the notebook's small default style under `make present`."""
    call = re.compile(r"^\s*use_lab_style\(", re.MULTILINE)
    served = present.lessons(REPO / "notebooks")
    assert served
    unstyled = []
    for path in served:
        cells = json.loads(path.read_text("utf-8"))["cells"]
        if not any(call.search("".join(c["source"])) for c in cells
                   if c["cell_type"] == "code"):
            unstyled.append(path.name)
    assert not unstyled, f"served without use_lab_style() in a code cell: {unstyled}"
