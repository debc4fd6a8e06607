"""The three layers stay apart: the engine imports nothing from the DQN run, the lab,
gymnasium, matplotlib or ipywidgets, and works installed alone from a wheel."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "ckptlab" / "engine"
FORBIDDEN = ("gymnasium", "gym", "matplotlib", "ipywidgets", "IPython", "tqdm", "ckptlab.dqn",
             "ckptlab.lab", "ckptlab.sb3", "stable_baselines3")
DQN = REPO / "ckptlab" / "dqn"
# The DQN run is ckptlab's own: the Stable-Baselines3 integration sits beside it, never below.
DQN_FORBIDDEN = ("ckptlab.sb3", "stable_baselines3", "ckptlab.lab")


def imported_modules(path: Path, package: str = "ckptlab.engine") -> list[tuple[int, str]]:
    """Every module a source file imports (absolute names; relative ones resolved)."""
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


def test_the_engine_imports_nothing_from_the_package_face():
    """``ckptlab/__init__.py`` re-exports the engine: an engine module importing it (for
    ``__version__``, once) makes a loop that only line order kept working."""
    offenders = [f"{path.name}:{line} imports {name}"
                 for path in sorted(ENGINE.glob("*.py"))
                 for line, name in imported_modules(path)
                 if name == "ckptlab" or (name.startswith("ckptlab.")
                                          and name.split(".")[1] not in ("engine",))]
    assert not offenders, offenders


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_two_modules_of_the_package_import_each_other_in_a_circle():
    """Module-level imports only (imports inside functions load lazily and cannot loop): the
    graph of ckptlab's modules has no cycle, so each reads without its importers."""
    package = REPO / "ckptlab"
    modules = {_module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        tree = ast.parse(path.read_text("utf-8"))
        for node in tree.body:  # top level only; `if TYPE_CHECKING:` blocks never run
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own.rsplit(".", node.level - 1)[0] if node.level > 1 else own
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                # `from pkg import sub` needs the submodule; `from pkg import name`, pkg itself
                candidates = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules
                              else target for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            edges |= {c for c in candidates if c in modules and c != name}
        graph[name] = edges
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail
                              else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package's __init__ re-exporting its own modules is an edge down, not a loop; a module
    # importing its package's __init__ (or the face) while the __init__ imports it is.
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_dqn_run_imports_nothing_from_stable_baselines3_or_the_lab():
    offenders = [f"{path.name}:{line} imports {name}"
                 for path in sorted(DQN.glob("*.py"))
                 for line, name in imported_modules(path, "ckptlab.dqn")
                 if any(name == f or name.startswith(f + ".") for f in DQN_FORBIDDEN)]
    assert not offenders, offenders


def test_importing_ckptlab_and_its_dqn_run_does_not_load_stable_baselines3():
    script = ("import sys, ckptlab, ckptlab.dqn, ckptlab.engine\n"
              "from ckptlab import Trainer, CheckpointManager\n"
              "print(sorted(m for m in sys.modules\n"
              "             if m.split('.')[0] == 'stable_baselines3' or m == 'ckptlab.sb3'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_boundary_check_would_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ..dqn import Trainer\nimport gymnasium as gym\n"
                   "from ..sb3 import CkptlabCallback\n")
    names = [name for _, name in imported_modules(bad)]
    assert "ckptlab.dqn" in names and "gymnasium" in names and "ckptlab.sb3" in names
    assert "ckptlab.sb3" in [name for _, name in imported_modules(bad, "ckptlab.dqn")]


# --------------------------------------------------------------------------------------------
# The command line is on top: nothing below it imports it or starts `python -m ckptlab`
# --------------------------------------------------------------------------------------------

BELOW_THE_CLI = ("engine", "dqn", "lab", "sb3")
# What a process started as `python -m NAME` would run: the command line.
CLI_MODULES = ("ckptlab", "ckptlab.__main__", "ckptlab.cli")
_LAUNCHING_CALLS = ("Popen", "run", "call", "check_call", "check_output", "system", "split",
                    "execv", "execvp", "spawnv", "spawnvp", "create_subprocess_exec")


def _strings(nodes: Iterable[ast.AST]) -> list[str | None]:
    return [n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else None
            for n in nodes]


def cli_calls(path: Path, package: str) -> list[str]:
    """Where a source file imports the command line, or starts it as a process: ``"-m",
    "ckptlab"`` side by side in a list, tuple or call (``[sys.executable, "-m", "ckptlab",
    ...]``), a command string given to a process-starting call (``"python -m ckptlab
    train"``), or an ``import_module``/``import_layer`` of it. Docstrings and messages that
    tell a person what to type are text, not code, and pass."""
    found = [f"{path.name}:{line} imports {name}" for line, name in imported_modules(path, package)
             if any(name == m or name.startswith(m + ".") for m in CLI_MODULES[2:])]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        sequences = []
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            sequences.append(node.elts)
        elif isinstance(node, ast.Call):
            sequences.append(node.args)
            function = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", "")
            for text in _strings(node.args):
                words = text.split() if text else []
                if function in _LAUNCHING_CALLS and any(
                        a == "-m" and b in CLI_MODULES for a, b in zip(words, words[1:])):
                    found.append(f"{path.name}:{node.lineno} runs {text!r}")
            if function in ("import_module", "import_layer", "__import__"):
                found += [f"{path.name}:{node.lineno} imports {text} indirectly"
                          for text in _strings(node.args[:1]) if text
                          and any(text == m or text.startswith(m + ".")
                                  for m in CLI_MODULES[2:])]
        for items in sequences:
            texts = _strings(items)
            found += [f"{path.name}:{node.lineno} starts python -m {b}"
                      for a, b in zip(texts, texts[1:]) if a == "-m" and b in CLI_MODULES]
    return found


def test_nothing_below_the_command_line_imports_it_or_starts_it_as_a_process():
    offenders = [offence
                 for layer in BELOW_THE_CLI
                 for path in sorted((REPO / "ckptlab" / layer).rglob("*.py"))
                 for offence in cli_calls(path, f"ckptlab.{layer}")]
    assert not offenders, offenders


def test_the_command_line_check_would_catch_each_way_of_calling_up(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent('''
        """Run ``python -m ckptlab train`` yourself."""  # a docstring for a person: fine
        import subprocess, sys
        from ..cli import main
        from ckptlab.cli.train import cmd_train
        from .. import cli
        subprocess.Popen([sys.executable, "-m", "ckptlab", "train"])
        launch(config, sys.executable)("-u", "-m", "ckptlab", *args)
        subprocess.run("python -m ckptlab train --run-dir x", shell=True)
        import_layer("ckptlab.cli", "x")
        print("run python -m ckptlab train to resume")  # a message: fine
        subprocess.Popen([sys.executable, "-m", "ckptlab.dqn", job])  # the DQN layer: fine
    '''))
    found = cli_calls(bad, "ckptlab.lab")
    assert len(found) == 7, found
    assert not any(":2 " in f or ":11 " in f or ":12 " in f for f in found), found


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


def _fresh_venv(path: Path) -> Path:
    """A venv with no packages at all (not even pip: this environment's pip installs into
    it with ``--python``); returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def _pip_into(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args],
                          capture_output=True, text=True, timeout=300)


def _site_packages(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def engine_only_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (console script included) and nothing but the
    engine's dependencies: torch, numpy and safetensors from this environment (same
    versions, no download), through a .pth naming a folder of links to just those."""
    base = tmp_path_factory.mktemp("engine-only")
    python = _fresh_venv(base / "venv")
    _link_engine_dependencies(base / "engine-deps")
    (_site_packages(python) / "engine-deps.pth").write_text(f"{base / 'engine-deps'}\n")
    done = _pip_into(python, "install", "-q", "--no-index", "--no-deps", str(wheel))
    assert done.returncode == 0, done.stdout + done.stderr
    return python


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
def test_engine_works_from_a_wheel_with_only_its_own_dependencies(engine_only_venv, tmp_path):
    """Install the wheel into a fresh venv that has torch, numpy and safetensors only, and
    checkpoint a plain torch module + optimizer from outside the source tree."""
    py = engine_only_venv
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
            assert 'pip install -c requirements.txt ".[rl]"' in str(exc), exc
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


ENGINE_DEPENDENCIES = ("torch", "numpy", "safetensors")


def _link_engine_dependencies(target: Path) -> dict[str, str]:
    """Symlink into ``target`` torch, numpy, safetensors and what they require."""
    return _link_distributions(target, ENGINE_DEPENDENCIES)


def _link_distributions(target: Path, requirements: Iterable[str],
                        exclude: Iterable[str] = ()) -> dict[str, str]:
    """Symlink into ``target`` the top-level modules (and metadata, so pip sees them as
    installed) of this environment's distributions that ``requirements`` need, transitively,
    extras and environment markers included, and nothing else (nor ``exclude``, nor what only
    they need). Returns {name: version} of what it linked."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    target.mkdir(exist_ok=True)
    pending, seen, linked = [Requirement(r) for r in requirements], set(), {}
    while pending:
        requirement = pending.pop()
        try:
            dist = md.distribution(requirement.name)
        except md.PackageNotFoundError:
            continue
        name = canonicalize_name(dist.metadata["Name"])
        if name in {canonicalize_name(n) for n in exclude}:
            continue
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for text in dist.requires or []:
                needed = Requirement(text)
                if needed.marker is None or needed.marker.evaluate({"extra": extra}):
                    pending.append(needed)
        if name in linked:
            continue
        linked[name] = dist.version
        roots = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
        base = Path(str(dist.locate_file("")))
        for root in roots:
            if root.endswith(".data") or root in ("bin", "__pycache__"):
                continue
            link = target / root
            if not link.exists() and (base / root).exists():
                link.symlink_to(base / root)
    return linked


# --------------------------------------------------------------------------------------------
# Without an extra: one `error:` line naming the extra and the install command
# --------------------------------------------------------------------------------------------

def missing(extra: str, libraries: str) -> str:
    """How every missing-extra line ends: where to run which install command (the README's)."""
    return (f"install the '{extra}' extra ({libraries}) by running, in the top folder of a "
            "clone of ckptlab's repository (see the README): pip install -c requirements.txt "
            f'".[{extra}]"')


MISSING_RL = missing("rl", "gymnasium, tqdm")


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
@pytest.mark.parametrize("command", [["train", "--run-dir", "run", "--steps", "3000"],
                                     ["train", "--nproc", "2", "--run-dir", "run"],
                                     ["demo"]], ids=["train", "train-nproc", "demo"])
def test_a_command_without_its_extra_prints_one_error_line(engine_only_venv, tmp_path, command):
    """The installed console script, with only the engine's dependencies: no traceback."""
    script = engine_only_venv.parent / "ckptlab"
    done = subprocess.run([str(script), *command], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: ckptlab {command[0]} needs gymnasium, which is not "
                               "installed: "), lines[0]
    assert MISSING_RL in lines[0]
    assert not (tmp_path / "run").exists(), "a refused command created its run directory"


# Every command that takes a location, given an s3:// one without boto3 (not in the engine-only
# venv): refused while its arguments are read, before anything runs.
S3_COMMANDS = {"inspect": ["inspect", "s3://bucket/run"],
               "verify": ["verify", "s3://bucket/run"],
               "ls": ["ls", "s3://bucket/runs", "--sort", "eval_return"],
               "export": ["export", "s3://bucket/run", "--out", "weights"],
               "prune": ["prune", "s3://bucket/run", "--keep-last", "1"],
               "train": ["train", "--run-dir", "s3://bucket/run", "--steps", "3000"],
               "train-nproc": ["train", "--nproc", "2", "--run-dir", "s3://bucket/run"]}


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
@pytest.mark.parametrize("command", list(S3_COMMANDS.values()), ids=list(S3_COMMANDS))
def test_an_s3_location_without_the_s3_extra_prints_one_error_line(engine_only_venv, tmp_path,
                                                                    command):
    """No traceback, no usage text, and nothing written here (no folder named ``s3:``)."""
    script = engine_only_venv.parent / "ckptlab"
    done = subprocess.run([str(script), *command], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: s3:// locations need boto3, which is not installed: " + missing("s3", "boto3")]
    assert list(tmp_path.iterdir()) == [], "a refused command wrote into the working directory"


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
def test_progress_works_without_the_lab_extra(engine_only_venv, tmp_path):
    """``ckptlab progress`` is the lab layer's, but needs none of the lab extra's libraries
    (the progress record and the quiz banks are the standard library and package data)."""
    script = engine_only_venv.parent / "ckptlab"
    record = tmp_path / "data" / "progress.json"
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([str(script), "progress"], cwd=work, capture_output=True, text=True,
                          env={**_clean_env(), "CKPTLAB_PROGRESS_FILE": str(record)},
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lessons done" in done.stdout and done.stderr == "", done.stdout + done.stderr
    assert list(work.iterdir()) == []


def test_progress_without_a_library_of_the_lab_extra_prints_one_error_line(monkeypatch,
                                                                           capsys):
    """Should the command ever need one (ipywidgets here), the line names the lab extra."""
    import importlib

    cli = importlib.import_module("ckptlab.cli.main")
    command, layer = cli.COMMANDS["progress"]
    assert layer == "ckptlab.lab"

    def needs_ipywidgets(args):
        import ipywidgets  # noqa: F401 - None in sys.modules: as if not installed
        return command(args)

    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    monkeypatch.setitem(cli.COMMANDS, "progress", (needs_ipywidgets, layer))
    assert cli.main(["progress"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "error: ckptlab progress needs ipywidgets, which is not installed: "
        + missing("lab", "JupyterLab, ipywidgets, matplotlib, nbval, papermill")]


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
def test_every_lazily_imported_name_without_its_extra_names_the_extra(engine_only_venv,
                                                                      tmp_path):
    import ckptlab

    script = textwrap.dedent("""
        import json, sys
        import ckptlab
        from ckptlab import MissingExtraError, import_layer
        found = {}
        for name in sys.argv[1:]:
            try:
                getattr(ckptlab, name)
            except MissingExtraError as exc:
                assert isinstance(exc, ImportError), exc
                found[name] = str(exc)
        for module in ("ckptlab.lab.lessons", "ckptlab.dqn.distributed"):
            try:
                import_layer(module)
            except MissingExtraError as exc:
                found[module] = str(exc)
        print(json.dumps(found))
    """)
    names = sorted(ckptlab._LAZY)
    done = subprocess.run([str(engine_only_venv), "-c", script, *names], cwd=tmp_path,
                          env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    assert sorted(found) == sorted([*names, "ckptlab.lab.lessons", "ckptlab.dqn.distributed"])
    for name in names:
        if ckptlab._LAZY[name] == "ckptlab.sb3":  # the sb3 layer: its own extra first
            assert "needs stable_baselines3" in found[name], found[name]
            assert missing("sb3", "stable-baselines3") in found[name], found[name]
            assert "\n" not in found[name]
            continue
        assert found[name].startswith(f"ckptlab.{name} needs gymnasium"), found[name]
        assert MISSING_RL in found[name] and "\n" not in found[name]
    assert found["ckptlab.lab.lessons"].endswith('pip install -c requirements.txt ".[lab]"')
    assert "install the 'lab' extra" in found["ckptlab.lab.lessons"]
    assert MISSING_RL in found["ckptlab.dqn.distributed"]


# --------------------------------------------------------------------------------------------
# Installing the extras from the wheel, against the pins
# --------------------------------------------------------------------------------------------

def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "requirements.txt").read_text("utf-8").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _wheel_extras(wheel: Path) -> dict[str, list[str]]:
    """{extra: its requirements} from the wheel's own metadata, ``ckptlab[x]`` expanded."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    extras = {line.split(":", 1)[1].strip(): [] for line in lines
              if line.startswith("Provides-Extra:")}
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            for extra in extras:
                if requirement.marker and requirement.marker.evaluate({"extra": extra}):
                    extras[extra].append(requirement)

    def expand(extra: str) -> list[str]:
        out = []
        for requirement in extras[extra]:
            if requirement.name == "ckptlab":
                out += [r for inner in sorted(requirement.extras) for r in expand(inner)]
            else:  # with its own extras (moto[s3]): they bring requirements too
                wanted = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
                out.append(f"{requirement.name}{wanted}{requirement.specifier}")
        return out

    return {extra: expand(extra) for extra in extras}


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
def test_each_extra_installs_from_the_wheel_against_the_pins_and_works(wheel, tmp_path):
    """One fresh venv; for each extra in turn, its libraries are made available at the pinned
    versions (links to this environment's copies, which must equal the pins: no download,
    no second torch), then ``pip install --no-index -c requirements.txt ckptlab-*.whl[EXTRA]``
    must resolve every requirement of the extra against them and install, and the extra's
    part of ckptlab must work from the installed wheel."""
    extras = _wheel_extras(wheel)
    assert {"rl", "lab"} <= set(extras), extras
    pins = _pins()
    python, deps = _fresh_venv(tmp_path / "venv"), tmp_path / "deps"
    (_site_packages(python) / "deps.pth").write_text(f"{deps}\n")
    _link_engine_dependencies(deps)
    checks = {
        "rl": [str(python.parent / "ckptlab"), "train", "--run-dir", "run", "--steps", "300",
               "--quiet"],
        "sb3": [str(python), "-c",  # a short PPO run checkpointed by the callback
                "from stable_baselines3 import PPO; from ckptlab.sb3 import CkptlabCallback; "
                "from ckptlab import latest_valid_checkpoint; "
                "model = PPO('MlpPolicy', 'CartPole-v1', n_steps=64, batch_size=32, "
                "n_epochs=1, seed=0, device='cpu'); "
                "model.learn(128, callback=CkptlabCallback('sb3-run')); "
                "print('saved at', latest_valid_checkpoint('sb3-run').step)"],
        "lab": [str(python), "-c", "import ckptlab.lab.widgets, ckptlab.lab.lessons, "
                "jupyterlab, nbval, papermill; from ckptlab.lab import store_lab; "
                "store_lab.start_local_s3().stop()"],  # lesson 10's S3 server
    }
    from packaging.version import Version

    for extra in sorted(extras, key=lambda e: len(extras[e])):  # rl, sb3, lab
        linked = _link_distributions(deps, extras[extra])
        stale = {name: (version, pins[name]) for name, version in linked.items()
                 if name in pins and Version(version).public != pins[name]}
        assert not stale, f"this environment differs from requirements.txt ({stale}): run " \
                          "make setup"
        done = _pip_into(python, "install", "--no-index", "--no-compile", "-c",
                         str(REPO / "requirements.txt"), f"{wheel}[{extra}]")
        assert done.returncode == 0, f"[{extra}]: {done.stdout}{done.stderr}"
        if extra in checks:
            ran = subprocess.run(checks[extra], cwd=tmp_path, env=_clean_env(),
                                 capture_output=True, text=True, timeout=300)
            assert ran.returncode == 0, f"[{extra}]: {ran.stdout}{ran.stderr}"
            if extra == "rl":
                assert "Finished at step 300" in ran.stdout, ran.stdout
            if extra == "sb3":
                assert "saved at 128" in ran.stdout, ran.stdout
    assert set(checks) <= set(extras), "an extra the checks know is no longer declared"


_OFFLINE = ("NewConnectionError", "ConnectTimeout", "Temporary failure in name resolution",
            "Network is unreachable", "ProxyError", "Could not fetch URL",
            "Read timed out", "Max retries exceeded")


@pytest.mark.skipif(os.environ.get("CKPTLAB_SKIP_WHEEL_TEST") == "1",
                    reason="CKPTLAB_SKIP_WHEEL_TEST=1")
def test_installing_with_the_pins_resolves_the_tested_torch_and_no_cuda_packages(wheel,
                                                                                 tmp_path):
    """What pip itself resolves (a dry run) for ``pip install -c requirements.txt
    ckptlab-*.whl[lab]``, every extra, into a venv without torch: the tested torch, no
    nvidia-* or triton package, every pinned package at its pin. The libraries that do not
    depend on torch are already there (linked at their pins, checked by the test above), so
    only torch and what it alone needs come from the package index: seconds, not minutes."""
    extras = _wheel_extras(wheel)
    python = _fresh_venv(tmp_path / "venv")
    (_site_packages(python) / "deps.pth").write_text(f"{tmp_path / 'deps'}\n")
    present = _link_distributions(tmp_path / "deps",
                                  [*extras["lab"], *ENGINE_DEPENDENCIES], exclude=["torch"])
    assert "torch" not in present and "jupyterlab" in present, sorted(present)
    report = tmp_path / "report.json"
    done = _pip_into(python, "install", "--dry-run", "--quiet", "--report", str(report),
                     "--timeout", "20", "--retries", "1", "-c", str(REPO / "requirements.txt"),
                     f"{wheel}[lab]")
    if done.returncode != 0 and any(word in done.stdout + done.stderr for word in _OFFLINE):
        pytest.skip("the package index is unreachable (no network?): nothing to resolve")
    assert done.returncode == 0, done.stdout + done.stderr
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert Version(resolved["torch"]).public == _pins()["torch"], resolved["torch"]
    heavy = sorted(n for n in resolved if n.startswith(("nvidia-", "cuda-", "triton")))
    assert not heavy, f"CUDA packages would be installed: {heavy}"
    off_pin = {n: (v, _pins()[n]) for n, v in resolved.items()
               if n in _pins() and Version(v).public != _pins()[n]}
    assert not off_pin, off_pin
    assert "ckptlab" in resolved and "torch" in resolved, sorted(resolved)


def _install_commands(text: str) -> list[str]:
    """Every ``pip install`` command a README, a document or a source file shows: the lines of
    its code blocks, its inline code (wrapped lines joined), and the rest of any other line
    that has one (a message, a comment)."""
    fence = r"```[a-z]*\n(.*?)```"
    commands = [line.split("#")[0].strip() for block in re.findall(fence, text, re.S)
                for line in block.splitlines()]
    prose = re.sub(fence, "", text, flags=re.S)
    commands += [" ".join(span.split()) for span in re.findall(r"`+([^`]+)`+", prose)]
    commands += [line[line.index("pip install"):].split("`")[0].strip()
                 for line in prose.splitlines() if "pip install" in line]
    return list(dict.fromkeys(c for c in commands if re.search(r"\bpip install\b", c)))


# An install of ckptlab by its name (from an index, where it is not), not of `.` or a wheel.
_BY_NAME = re.compile(r"""(?:^|[\s"'])ckptlab(?=[\[\s"'=<>~!]|$)""")
# What installs ckptlab itself: this folder (`.`, `".[rl]"`, `-e .`) or a wheel built here.
_CKPTLAB = re.compile(r"""(?:^|\s)["']?(?:\.|[^\s]*ckptlab[^\s]*)(?:\[[^\]\s]*\])?["']?(?=\s|$)""")


def _install_problem(command: str, extras: set[str]) -> str | None:
    """Why ``command`` would not install ckptlab against the pins (None: it would)."""
    pinned = "-c requirements.txt" in command or "-r requirements.txt" in command
    for part in command.split("&&"):
        if "pip install" not in part:
            continue
        arguments = part[part.index("pip install") + len("pip install"):]
        if _BY_NAME.search(arguments):
            return "ckptlab is not on a public index: install it from a clone of the repository"
        if _CKPTLAB.search(arguments) and not pinned and "--no-deps" not in arguments:
            return "installs ckptlab without the pins (-c requirements.txt)"
        for named in re.findall(r"\[([a-z0-9_,-]+)\]", arguments):
            if not set(named.split(",")) <= extras:
                return f"no such extra: [{named}]"
    return None


def _extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
               ["optional-dependencies"])


def test_every_install_line_in_the_readme_installs_against_the_pins():
    """ckptlab is not on a public index and torch must be the tested one: every ``pip
    install`` the README shows (code blocks and inline code) installs from this repository
    or a wheel built here, with ``-c requirements.txt`` or ``-r requirements.txt``, and
    names only extras that exist."""
    installs = _install_commands((REPO / "README.md").read_text("utf-8"))
    assert len(installs) >= 6, installs
    extras = _extras()
    problems = [(c, _install_problem(c, extras)) for c in installs]
    assert not [p for p in problems if p[1]], [p for p in problems if p[1]]


# Not searched: other projects' files, and the history of what older versions said.
_NOT_OURS = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}


def _our_text_files() -> Iterable[Path]:
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in _NOT_OURS and not d.startswith(".")]
        for name in files:
            if name.endswith((".py", ".md")) and name != "HISTORY.md":
                yield Path(folder, name)


def test_every_install_line_in_the_repository_installs_against_the_pins():
    """The same for every ``.py`` and ``.md`` file: docstrings, comments, documents and the
    messages the package prints (a missing extra's install command)."""
    extras = _extras()
    problems = [f"{path.relative_to(REPO)}: {command!r}: {problem}"
                for path in _our_text_files()
                for command in _install_commands(path.read_text("utf-8", errors="replace"))
                if (problem := _install_problem(command, extras))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line", [  # PIP, not the command: this file is searched too
    "PIP ckptlab", 'PIP "ckptlab[rl]"', "PIP ckptlab==0.5",
    'PIP -c requirements.txt "ckptlab[s3]"', 'PIP ".[lab]"', "PIP -e .",
    "PIP $(ls dist/ckptlab-*.whl)", 'PIP -c requirements.txt ".[nope]"'])
def test_the_install_line_check_catches_each_wrong_form(line):
    line = line.replace("PIP", "pip install")
    assert _install_problem(line, _extras()), line
    assert _install_commands(f"run ``{line}`` first") == [line]
