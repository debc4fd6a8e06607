"""The three layers stay apart: the engine imports nothing from the DQN run, the lab,
gymnasium, matplotlib or ipywidgets, and works installed alone from a wheel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "ckptlab" / "engine"
FORBIDDEN = ("gymnasium", "gym", "matplotlib", "ipywidgets", "IPython", "tqdm", "ckptlab.dqn",
             "ckptlab.lab")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a source file imports (absolute names; relative ones resolved)."""
    package = "ckptlab.engine"
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
                found += [(node.lineno, f"{name}.{a.name}" if not node.module else name)
                          for a in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def test_the_engine_imports_nothing_from_the_rl_run_the_lab_or_their_libraries():
    offenders = [f"{path.name}:{line} imports {name}"
                 for path in sorted(ENGINE.glob("*.py"))
                 for line, name in imported_modules(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert not offenders, offenders


def test_the_boundary_check_would_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..dqn import Trainer\nimport gymnasium as gym\n")
    names = [name for _, name in imported_modules(bad)]
    assert "ckptlab.dqn" in names and "gymnasium" in names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """ckptlab built as a wheel (not an editable install)."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True)
    return next(wheels.glob("ckptlab-*.whl"))


def test_lessons_quizzes_and_exercise_checks_work_from_an_installed_wheel(wheel, tmp_path):
    """Installed from the wheel, outside the source tree (the quiz banks are package data)."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True)
    script = textwrap.dedent("""
        import ckptlab, pathlib
        assert "site" in pathlib.Path(ckptlab.__file__).parts, ckptlab.__file__
        from ckptlab.lab import exercises, quiz
        banks = sorted(p.stem for p in quiz.QUIZ_DIR.glob("[0-9][0-9]_*.json"))
        assert len(banks) >= 10, banks
        for name in banks:
            bank = quiz.load_quiz(name)
            assert quiz.quiz_static_html(bank) and quiz.show_quiz(name, seed=0)
        assert exercises.check_rank_counts(None, 50_000, 96).passed is None
        assert exercises.check_rank_counts({1, 2, 4, 8}, 50_000, 96).passed is True
        assert exercises.check_rank_counts({3}, 50_000, 96).passed is False
        print("wheel install ok:", len(banks), "quiz banks")
    """)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wheel install ok" in result.stdout


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
def test_engine_works_from_a_wheel_with_only_its_own_dependencies(wheel, tmp_path):
    """Install the wheel into a fresh venv that has torch, numpy and safetensors only, and
    checkpoint a plain torch module + optimizer from outside the source tree."""
    venv = tmp_path / "venv"
    # The engine's dependencies come from this environment (same versions, no download), and
    # nothing else does: a fresh venv whose .pth names a folder of links to just those.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    site, str(wheel)], check=True)
    deps = tmp_path / "engine-deps"
    _link_engine_dependencies(deps)
    (Path(site) / "engine-deps.pth").write_text(f"{deps}\n")
    script = textwrap.dedent("""
        import importlib.util, sys
        import torch
        from ckptlab import CheckpointManager, KeepLastN
        assert importlib.util.find_spec("gymnasium") is None, "gymnasium leaked in"
        assert "ckptlab.dqn" not in sys.modules and "ckptlab.lab" not in sys.modules
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.Adam(model.parameters())
        model(torch.ones(1, 4)).sum().backward(); opt.step()
        with CheckpointManager("run/checkpoints", retention=[KeepLastN(2)]) as m:
            m.register("model", model); m.register("optimizer", opt)
            m.save(1, metrics={"loss": 0.5})
        model2 = torch.nn.Linear(4, 2); opt2 = torch.optim.Adam(model2.parameters())
        with CheckpointManager("run/checkpoints") as m:
            m.register("model", model2); m.register("optimizer", opt2)
            info = m.restore_latest()
        assert info.step == 1
        assert torch.equal(model.weight, model2.weight)
        assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
        try:
            from ckptlab import Trainer
        except ImportError as exc:
            assert "ckptlab[rl]" in str(exc), exc
        else:
            raise AssertionError("Trainer imported without gymnasium")
        import ckptlab.lab.quiz as quiz  # package data travels in the wheel
        assert quiz.load_quiz("01_pipeline_trace").questions
        print("engine-only install ok")
    """)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(py), "-c", script], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "engine-only install ok" in result.stdout


def _link_engine_dependencies(target: Path) -> None:
    """Symlink into ``target`` the top-level modules of torch, numpy, safetensors and what
    they require (transitively), and nothing else from this environment."""
    import importlib.metadata as md
    import re

    wanted, seen = ["torch", "numpy", "safetensors"], set()
    target.mkdir()
    while wanted:
        name = wanted.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for req in dist.requires or []:
            if "extra ==" not in req:
                wanted.append(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
        roots = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
        base = Path(str(dist.locate_file("")))
        for root in roots:
            if root.endswith(".data") or root in ("bin", "__pycache__"):
                continue
            link = target / root
            if not link.exists() and (base / root).exists():
                link.symlink_to(base / root)
