"""Record the suite's reference material in data/, each piece with its provenance.

    .venv/bin/python tools/record_reference_data.py checkpoints   # one per format version
    .venv/bin/python tools/record_reference_data.py full-run      # the long full-mode run

``checkpoints``: for every released checkpoint format, the code of the ckptlab release that
wrote it is taken from git (``git archive COMMIT ckptlab``) into a temporary folder and run as
it was - ``python -m ckptlab train`` on a tiny configuration - so the checkpoint in
``data/checkpoints/format-vN/`` is what that release really wrote, not an imitation. Version 4
(sharded) is written by a 2-rank run. ``tests/engine/test_format_versions.py`` reads each back
with today's code, so a new version can never strand an old checkpoint.

``full-run``: the classroom ("full mode") run the instructor guide uses for long-horizon curves:
50 000 steps of CartPole, a checkpoint every 1000 steps, recorded as the final checkpoint's
metric history plus each checkpoint's manifest metrics and size
(``data/full-mode-run/run.json``), read by :func:`ckptlab.lab.recorded.load_full_run`.

Each folder gets ``provenance.json``: the command, the commit, the date, the versions and the
machine. Run from the repository root; it takes about a minute for the checkpoints and a few
minutes for the full run on one core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

# The configuration every format checkpoint is trained with: small enough that the checkpoint
# is a few tens of kB, long enough that the agent has learned, evaluated and saved.
TINY = {"hidden_sizes": [16, 16], "buffer_capacity": 400, "batch_size": 16,
        "learning_starts": 100, "steps_per_epoch": 200, "eval_episodes": 1,
        "exploration_steps": 300, "target_update_every": 50}
TINY_STEPS = 400

# format version -> (release, commit whose code wrote it, ranks)
RELEASES = {
    1: ("ckptlab 0.1.0", "0e2270c", 1),   # the last commit of 0.1.0 (format 2 came next)
    2: ("ckptlab 0.2.0", "29446d3", 1),   # the last commit of 0.2.0 (format 3 came next)
    3: ("ckptlab 0.3.0", "fd33cd5", 1),   # the commit that released 0.3.0 and format 3
    4: ("ckptlab 0.4.0", "03208fe", 2),   # the commit that made sharded checkpoints format 4
}

# The full-mode classroom run
FULL_RUN = {"seed": 0, "total_steps": 50_000, "steps_per_epoch": 1000, "learning_starts": 500,
            "eval_episodes": 5, "save_every_steps": 1000}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


def provenance(command: list[str], commit: str, **extra: object) -> dict[str, object]:
    import torch

    # A run of the working tree (HEAD) names the package files that differed from the commit.
    status = git("status", "--porcelain", "--", "ckptlab") if commit == "HEAD" else ""
    dirty = sorted(line.split(maxsplit=1)[1] for line in status.splitlines())
    return {"command": " ".join(command), "commit": git("rev-parse", commit),
            "uncommitted_changes_in_ckptlab": dirty,
            "commit_date": git("show", "-s", "--format=%cI", commit),
            "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": f"{platform.system()} {platform.machine()}",
            "recorded_by": "tools/record_reference_data.py", **extra}


def checkout(commit: str, into: Path) -> Path:
    """The ``ckptlab`` package of ``commit``, extracted under ``into``."""
    archive = subprocess.run(["git", "archive", commit, "ckptlab"], cwd=REPO, check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def record_checkpoints(versions: list[int]) -> None:
    for version in versions:
        release, commit, ranks = RELEASES[version]
        out = DATA / "checkpoints" / f"format-v{version}"
        with tempfile.TemporaryDirectory(prefix="ckptlab-record-") as tmp:
            code = checkout(commit, Path(tmp) / "code")
            config = Path(tmp) / "tiny.json"
            config.write_text(json.dumps(TINY))
            run = Path(tmp) / "run"
            command = [sys.executable, "-m", "ckptlab", "train", "--run-dir", str(run),
                       "--config", str(config), "--steps", str(TINY_STEPS), "--save-every",
                       str(TINY_STEPS), "--seed", "0", "--device", "cpu", "--quiet"]
            if ranks > 1:
                command += ["--nproc", str(ranks)]
            env = {**os.environ, "PYTHONPATH": str(code)}
            done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{release} failed:\n{done.stdout}\n{done.stderr}")
            written = run / "checkpoints" / f"step_{TINY_STEPS:08d}"
            manifest = json.loads((written / "manifest.json").read_text())
            if manifest.get("format_version") != version:
                raise SystemExit(f"{release} wrote format {manifest.get('format_version')}, "
                                 f"not {version}")
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            shutil.copytree(written, out / written.name)
            shown = ["python", "-m", "ckptlab", "train", "--run-dir", "RUN", "--config",
                     "tiny.json", *command[8:]]
            (out / "provenance.json").write_text(json.dumps(provenance(
                shown, commit, release=release, format_version=version, ranks=ranks,
                config=TINY, checkpoint=written.name,
                code="git archive COMMIT ckptlab, run with PYTHONPATH pointing at it",
                written_by=manifest.get("library_versions", manifest.get("versions"))),
                indent=1) + "\n")
        print(f"data/checkpoints/format-v{version}: {release} ({commit})", flush=True)


def record_full_run() -> None:
    from ckptlab import DQNConfig, Trainer
    from ckptlab.engine import committed_checkpoints, read_manifest

    out = DATA / "full-mode-run"
    config = DQNConfig(**FULL_RUN)
    with tempfile.TemporaryDirectory(prefix="ckptlab-full-run-") as tmp:
        started = time.perf_counter()
        with Trainer(config, Path(tmp) / "run") as trainer:
            trainer.train()
            history = trainer.metrics.state_dict()
        seconds = time.perf_counter() - started
        checkpoints = []
        for path in committed_checkpoints(Path(tmp) / "run" / "checkpoints"):
            manifest = read_manifest(path)
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            checkpoints.append({"step": manifest["step"], "metrics": manifest["metrics"],
                                "bytes": size})
    # JSON has no NaN: an epoch without a loss or an evaluation is null (read back as NaN).
    metrics = {key: [None if isinstance(v, float) and math.isnan(v) else v
                     for v in (value.tolist() if hasattr(value, "tolist") else value)]
               for key, value in history.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(
        {"format": "ckptlab-recorded-run", "version": 1, "config": config.to_dict(),
         "metrics": metrics, "checkpoints": checkpoints}, separators=(",", ":")) + "\n")
    command = ["python", "tools/record_reference_data.py", "full-run"]
    (out / "provenance.json").write_text(json.dumps(provenance(
        command, "HEAD", config=FULL_RUN, seconds=round(seconds, 1),
        what="Trainer(DQNConfig(**config)).train() in one process; the final checkpoint's "
             "metric history and every checkpoint's manifest metrics and size"),
        indent=1) + "\n")
    print(f"data/full-mode-run: {config.total_steps} steps in {seconds:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("checkpoints", "full-run"))
    parser.add_argument("--versions", type=int, nargs="*", default=sorted(RELEASES))
    args = parser.parse_args()
    if args.what == "checkpoints":
        record_checkpoints(args.versions)
    else:
        record_full_run()


if __name__ == "__main__":
    main()
