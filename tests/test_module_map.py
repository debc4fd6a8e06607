"""docs/architecture.md's module map names every module of the package, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ckptlab"
LAYERS = ("engine", "dqn", "sb3", "cli", "lab")


def _mapped() -> dict[str, set[str]]:
    """The module names each layer's table lists (``### ... (`ckptlab/<layer>/`...``)."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    for block in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        heading = block.splitlines()[0]
        layer = re.search(r"`ckptlab/(\w+)/`", heading)
        if layer is None:
            continue
        names = set()
        for row in re.findall(r"^\| (.+?) \|", block, flags=re.MULTILINE):
            names.update(re.findall(r"`([\w/.*]+\.(?:py|json))`", row))
        found[layer.group(1)] = names
    return found


def test_every_module_is_in_the_map_and_every_row_exists():
    mapped = _mapped()
    assert set(mapped) == set(LAYERS), f"layers with a table: {sorted(mapped)}"
    for layer in LAYERS:
        actual = {p.name for p in (PACKAGE / layer).glob("*.py")}
        listed = {name for name in mapped[layer] if name.endswith(".py")}
        assert not actual - listed, f"ckptlab/{layer}/: not in docs/architecture.md's module " \
                                    f"map: {sorted(actual - listed)}"
        assert not listed - actual, f"docs/architecture.md lists ckptlab/{layer}/ modules " \
                                    f"that do not exist: {sorted(listed - actual)}"
    assert not [p for p in PACKAGE.glob("*/") if p.is_dir() and p.name not in LAYERS
                and not p.name.startswith("__") and any(p.glob("*.py"))]


def test_the_other_module_lists_point_to_the_map():
    for init in ("engine", "dqn", "cli", "lab", "sb3"):
        doc = (PACKAGE / init / "__init__.py").read_text(encoding="utf-8")
        assert "architecture.md" in doc, f"ckptlab/{init}/__init__.py does not point to the map"
    assert "docs/architecture.md" in (REPO / "README.md").read_text(encoding="utf-8")
