"""Serve the lessons for projecting (what ``make present`` runs): Voila, code hidden, every lesson
pre-run in a waiting kernel so that a page is usable within seconds of opening it.

    .venv/bin/python tools/present.py                          # every lesson, start page first
    .venv/bin/python tools/present.py 04_interrupt_and_resume  # one lesson
    .venv/bin/python tools/present.py --preheat 04 05          # list all, pre-run only these

What it does:

* **A curated tree.** The lessons (``NN_*.ipynb``) are copied into ``build/present/`` - the
  solutions notebook is never copied, listed or served, and a lesson's link to it becomes
  plain text - with the pictures the start page shows (``docs/*.png``). It is rebuilt on
  every start, so it always holds the current lessons.
* **Pre-heated kernels.** Voila's ``preheat_kernel`` runs each lesson (its real runs: the
  SIGKILLed process, the 2-rank job, ...) in a kernel that waits for the first visitor; opening
  the lesson then sends the finished page at once and connects its controls to that kernel.
  The pool refills in the background for the next visitor. ``--preheat`` limits which lessons
  are pre-run (the others start when opened, as plain Voila does); ``--no-preheat`` turns it
  off.
* **The presentation style and no progress.** Every kernel gets ``CKPTLAB_PRESENTATION=1``
  (large titles, legends, ticks, tables and controls: ``ckptlab.lab.figures``) and
  ``CKPTLAB_PROGRESS=off`` (a class answering on the projector is not one learner's record).

The terminal says when each lesson's kernel is ready ("Kernel pool of ... is filled").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
TREE = REPO / "build" / "present"
LESSON = re.compile(r"^\d\d_[A-Za-z0-9_]+\.ipynb$")


def lessons(source: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks a presentation serves: the start page and the lessons, never the
    solutions (or anything else that is not ``NN_name.ipynb``)."""
    return sorted(p for p in source.glob("*.ipynb") if LESSON.match(p.name))


def _strip_solution_links(text: str) -> str:
    """``[the solutions notebook](solutions.ipynb)`` -> ``the solutions notebook (not served
    in the presentation)``: the link would only lead to a 404."""
    return re.sub(r"\[([^\]]+)\]\(solutions\.ipynb[^)]*\)",
                  r"\1 (not served in the presentation)", text)


def build_tree(source: Path = NOTEBOOKS, tree: Path = TREE) -> list[str]:
    """Copy the lessons (and the pictures their markdown shows) into ``tree``; return the
    notebook names served."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    served = []
    for path in lessons(source):
        nb = json.loads(path.read_text("utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "markdown":
                text = "".join(cell["source"]) if isinstance(cell["source"], list) \
                    else cell["source"]
                text = re.sub(r"!\[([^\]]*)\]\(\.\./docs/", r"![\1](docs/", text)
                text = re.sub(r"(?<!!)\[([^\]]+)\]\(\.\./docs/[^)]*\)",
                              r"\1 (in the repository's docs/)", text)
                cell["source"] = _strip_solution_links(text)
        (tree / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n",
                                      "utf-8")
        served.append(path.name)
    docs = source.parent / "docs"
    if docs.is_dir():
        (tree / "docs").mkdir()
        for picture in docs.glob("*.png"):
            shutil.copy2(picture, tree / "docs" / picture.name)
    return served


def voila_command(tree: Path, lesson: str | None, port: int, preheat: list[str] | None,
                  pool: int = 1, refill_delay_s: float = 30) -> list[str]:
    """The Voila command line: one lesson, or the whole tree; pre-heated kernels for the
    lessons in ``preheat`` (``None``: all of them; ``[]``: none)."""
    target = tree / lesson if lesson else tree
    command = [sys.executable, "-m", "voila", str(target), "--no-browser",
               "--Voila.ip=127.0.0.1", f"--port={port}",
               # code hidden (Voila's default), and no tracebacks shown to the room
               "--VoilaConfiguration.show_tracebacks=False"]
    if preheat == []:
        return command
    config: dict[str, dict[str, object]] = {"default": {"pool_size": pool if preheat is None
                                                        else 0}}
    for name in preheat or []:
        config[name] = {"pool_size": pool}
    command += ["--preheat_kernel=True", f"--pool_size={pool}",
                f"--VoilaKernelManager.kernel_pools_config={json.dumps(config)}",
                # refill a used kernel only after the room has moved on: its run would
                # otherwise compete with the live controls for the CPU
                f"--VoilaKernelManager.fill_delay={refill_delay_s:g}"]
    return command


def kernel_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What every presented lesson's kernel runs with."""
    env = dict(os.environ if environ is None else environ)
    env.update(CKPTLAB_PRESENTATION="1", CKPTLAB_PROGRESS="off", JUPYTER_PLATFORM_DIRS="1")
    return env


def resolve(name: str, served: list[str]) -> str:
    """A lesson named in full, by stem or by number (``04``) -> its notebook name."""
    stem = name.removesuffix(".ipynb")
    matches = [s for s in served if s.removesuffix(".ipynb") == stem or s.startswith(f"{stem}_")]
    if len(matches) != 1:
        raise SystemExit(f"error: no lesson {name!r} to present; choose one of: "
                         + ", ".join(s.removesuffix(".ipynb") for s in served))
    return matches[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lesson", nargs="?", default="",
                        help="one lesson (name, stem or number); default: all of them")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--preheat", nargs="*", metavar="LESSON",
                        help="pre-run only these lessons (default: every lesson served)")
    parser.add_argument("--no-preheat", action="store_true",
                        help="run each lesson when it is opened (plain Voila)")
    parser.add_argument("--pool", type=int, default=1,
                        help="waiting kernels per lesson (default 1)")
    parser.add_argument("--refill-delay", type=float, default=30, metavar="SECONDS",
                        help="wait before pre-running a lesson again after it was opened "
                             "(default 30)")
    args = parser.parse_args(argv)
    served = build_tree()
    lesson = resolve(args.lesson, served) if args.lesson else None
    preheat = [] if args.no_preheat else (
        None if args.preheat is None else [resolve(n, served) for n in args.preheat])
    if lesson and preheat is None:
        preheat = [lesson]
    command = voila_command(TREE, lesson, args.port, preheat, args.pool, args.refill_delay)
    ready = "every lesson" if preheat is None else ", ".join(preheat) or "no lesson"
    print(f"Presenting {lesson or f'{len(served)} notebooks'} from {TREE.relative_to(REPO)} "
          f"at http://127.0.0.1:{args.port} (solutions not served); pre-running {ready}: wait "
          "for 'Kernel pool of ... is filled' before opening a lesson.", flush=True)
    os.execve(sys.executable, command, kernel_environment())


if __name__ == "__main__":
    main()
