"""The committed notebooks show what they build, and print no machine paths.

Two defects no execution test catches (issue 12):

* a table (or any HTML-returning helper's result) that is built but never displayed: a call
  such as ``show_table(rows)`` only appears when it is the *last expression* of its cell, so
  anywhere else it silently vanishes. It must be the last expression, be passed to
  ``display(...)``, or be assigned to a name that is.
* a temporary or machine path (``/tmp/...``, ``/root/...``, ``/work/...``, ``/home/...``) in
  a cell's source or in its outputs (notebooks may be committed with or without outputs; the
  outputs are checked whenever they are present).

The helpers that return displayable HTML are found in the package itself (functions of
``ckptlab.lab`` that ``return HTML(...)``, and exercise checks, whose results render as HTML),
so a new helper is covered without editing this test.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|root|work|home)/")


def html_builders() -> set[str]:
    """Names of ``ckptlab.lab`` functions whose result must be displayed to be seen."""
    names = {"HTML", "Markdown"}
    for module in (REPO / "ckptlab" / "lab").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text("utf-8"))):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            returns_html = any(
                isinstance(n, ast.Return) and isinstance(n.value, ast.Call)
                and _name(n.value.func) == "HTML" for n in ast.walk(node))
            returns_result = ast.unparse(node.returns or ast.Constant(None)) == "ExerciseResult" \
                or node.name.startswith("check_")
            if returns_html or returns_result:
                names.add(node.name)
    return names


def _name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _parse_cell(source: str) -> ast.Module | None:
    # IPython magics and shell escapes are not Python; blank them out, keep line numbers.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line
             for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def undisplayed_calls(source: str, builders: set[str]) -> list[str]:
    """Calls of ``builders`` in one cell whose result is never displayed."""
    tree = _parse_cell(source)
    if tree is None or not tree.body:
        return []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    last = tree.body[-1]
    last_value = last.value if isinstance(last, ast.Expr) else None
    displayed_names = {a.id for n in ast.walk(tree) if isinstance(n, ast.Call)
                       and _name(n.func) == "display" for a in n.args if isinstance(a, ast.Name)}
    if isinstance(last_value, ast.Name):
        displayed_names.add(last_value.id)
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _name(node.func) in builders):
            continue
        parent = parents.get(node)
        if node is last_value:
            continue  # the cell's last expression: Jupyter displays it
        if isinstance(parent, ast.Call) and _name(parent.func) == "display" \
                and node in parent.args:
            continue
        if isinstance(parent, ast.Return):
            continue  # a helper defined in the cell returns it to its caller
        if isinstance(parent, ast.Assign) and all(
                isinstance(t, ast.Name) and t.id in displayed_names for t in parent.targets):
            continue
        if any(isinstance(p, (ast.FunctionDef, ast.Lambda)) for p in _ancestors(node, parents)) \
                and isinstance(parent, (ast.Assign, ast.Return)):
            continue
        problems.append(f"line {node.lineno}: {ast.unparse(node)[:70]}")
    return problems


def _ancestors(node: ast.AST, parents: dict[ast.AST, ast.AST]):
    while node in parents:
        node = parents[node]
        yield node


def machine_paths(cell: dict) -> list[str]:
    """Machine paths in a cell's source and in every text of its outputs."""
    texts = ["".join(cell.get("source", ""))]
    for output in cell.get("outputs", []):
        texts.append("".join(output.get("text", "")))
        texts += ["".join(v) if isinstance(v, list) else str(v)
                  for v in output.get("data", {}).values()]
        texts += output.get("traceback", [])
    found = []
    for text in texts:
        for match in MACHINE_PATH.finditer(text):
            found.append(text[max(0, match.start() - 30):match.end() + 30].replace("\n", " "))
    return found


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text("utf-8"))["cells"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_table_is_displayed(notebook):
    builders = html_builders()
    problems = [f"cell {i} {p}" for i, cell in enumerate(_cells(notebook))
                if cell["cell_type"] == "code"
                for p in undisplayed_calls("".join(cell["source"]), builders)]
    assert not problems, (f"{notebook.name}: built but never displayed (make it the cell's "
                          "last expression or wrap it in display(...)):\n" + "\n".join(problems))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_machine_paths(notebook):
    problems = [f"cell {i}: ...{p}..." for i, cell in enumerate(_cells(notebook))
                for p in machine_paths(cell)]
    assert not problems, f"{notebook.name} shows machine paths:\n" + "\n".join(problems)


# -- the checks themselves can fail ----------------------------------------------------------

def test_builders_are_found_in_the_package():
    assert {"show_table", "key_insight", "HTML"} <= html_builders()


@pytest.mark.parametrize("source, bad", [
    ("show_table(rows)", 0),
    ("x = 1\nshow_table(rows)", 0),
    ("display(show_table(rows))\nprint(1)", 0),
    ("t = show_table(rows)\ndisplay(t)", 0),
    ("t = show_table(rows)\nt", 0),
    ("def f():\n    return show_table(rows)", 0),
    ("%matplotlib inline\nshow_table(rows)", 0),
    ("show_table(rows)\nprint(1)", 1),
    ("for r in rows:\n    show_table(r)", 1),
    ("t = show_table(rows)\nprint(t)", 1),
    ("lessons.show_table(a)\nkey_insight('x')", 1),
    ("show_table(a)\nshow_table(b)\nshow_table(c)", 2),
    ("check_lost_steps(1, save_every=2, killed_after=3)\nx = 1", 1),
])
def test_undisplayed_calls_are_caught(source, bad):
    builders = {"show_table", "key_insight", "check_lost_steps"}
    assert len(undisplayed_calls(source, builders)) == bad


def test_machine_paths_are_caught_in_source_and_outputs():
    clean = {"source": "print('<work>/runs')", "outputs": [{"text": "saved in <work>/x"}]}
    assert machine_paths(clean) == []
    assert machine_paths({"source": "p = '/tmp/ckptlab-x'", "outputs": []})
    assert machine_paths({"source": "", "outputs": [
        {"output_type": "stream", "text": ["resuming from /root/runs/a\n"]}]})
    assert machine_paths({"source": "", "outputs": [
        {"output_type": "display_data", "data": {"text/html": "<td>/home/me/x</td>"}}]})
    assert machine_paths({"source": "", "outputs": [
        {"output_type": "error", "traceback": ["File /work/main/ckptlab/x.py"]}]})


def _navigation_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("add_navigation",
                                                  REPO / "tools" / "add_navigation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_lesson_ends_with_up_to_date_navigation():
    tool = _navigation_tool()
    present = tool.present_lessons()
    missing = {p.stem for p in NOTEBOOKS} - set(present)
    assert not missing, f"add {sorted(missing)} to LESSONS in tools/add_navigation.py"
    for stem in present:
        cells = _cells(REPO / "notebooks" / f"{stem}.ipynb")
        last = cells[-1]
        expected = tool.navigation_markdown(stem, present)
        assert last.get("id") == tool.CELL_ID and "".join(last["source"]) == expected, \
            f"{stem}: navigation missing or stale; run python tools/add_navigation.py"
        for target in re.findall(r"\]\(([^)]+\.ipynb)\)", expected):
            assert (REPO / "notebooks" / target).exists(), f"{stem} links to missing {target}"


def test_navigation_links_neighbours_only():
    tool = _navigation_tool()
    present = ["00_start_here", "01_pipeline_trace", "02_prediction_trace"]
    middle = tool.navigation_markdown("01_pipeline_trace", present)
    assert "(00_start_here.ipynb)" in middle and "(02_prediction_trace.ipynb)" in middle
    last = tool.navigation_markdown("02_prediction_trace", present)
    assert "Next" not in last and "(01_pipeline_trace.ipynb)" in last
    assert "Previous" not in tool.navigation_markdown("00_start_here", present)


def test_a_table_shows_its_cells_as_text_not_markup():
    """Lesson 10's rollback table names ``abandoned/<time>-after-step_...``: unescaped, the
    browser took ``<time>`` for a tag and the learner read ``abandoned/-after-step_...``."""
    from ckptlab.lab.lessons import show_table

    html = show_table([{"<kind>": "abandoned/<time>-after-step_00002000", "n": 1.5}]).data
    assert "<td style='text-align:left'>abandoned/&lt;time&gt;-after-step_00002000</td>" in html
    assert "<th style='text-align:left'>&lt;kind&gt;</th>" in html
    assert "<time>" not in html
