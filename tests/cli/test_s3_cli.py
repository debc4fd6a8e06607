"""The command line on an S3-compatible store (moto's server on 127.0.0.1): inspect, verify,
ls, prune and export read and change a run in a bucket, and a location ckptlab cannot use is
one error line before anything is written - never a local folder named after the URL.

``verify`` runs as ``python -m ckptlab`` in a real process (the entry point, configured by
the environment alone); the other commands run in this process through the very function it
calls (``ckptlab.cli.main``), which saves a Python start-up per command."""

from __future__ import annotations

import json

import pytest

from ckptlab import DQNConfig, Trainer
from ckptlab.cli import main
from conftest import FAST, run_cli

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    """A short DQN run written to a bucket: ``(environment, run URL, export folder)``."""
    with s3_support.moto_server() as url:
        environment = s3_support.environment(url)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            bucket = s3_support.new_bucket(url)
            run = f"s3://{bucket}/runs/a"
            config = DQNConfig(**{**FAST, "total_steps": 1200, "save_every_steps": 400})
            with Trainer(config, run) as trainer:
                trainer.train()
            yield environment, run, tmp_path_factory.mktemp("export")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``ckptlab ARGS`` in this process: ``(exit status, stdout, stderr)``."""
    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse refuses an argument
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_verify_inspect_and_ls_read_the_run_in_the_bucket(store_run, capsys):
    environment, run, _ = store_run
    verified = run_cli("verify", run, env_extra=environment)
    assert verified.returncode == 0, verified.stderr
    assert "3 of 3 checkpoint(s) valid" in verified.stdout
    status, out, err = cli(capsys, "inspect", run, "--json")
    assert status == 0, err
    described = json.loads(out)
    assert described["path"] == f"{run}/checkpoints/step_00001200"
    assert described["status"] == "valid" and described["components"]["agent"]["tensors"] > 0
    status, out, err = cli(capsys, "ls", run.rsplit("/", 2)[0], "--json")
    assert status == 0, err
    rows = json.loads(out)
    assert [(r["run"], r["step"], r["status"]) for r in rows] == \
        [("runs/a", step, "valid") for step in (400, 800, 1200)]


def test_export_and_prune_on_the_bucket(store_run, capsys):
    _, run, out_dir = store_run
    status, _, err = cli(capsys, "export", run, "--out", str(out_dir))
    assert status == 0, err
    assert (out_dir / "weights.safetensors").stat().st_size > 0
    status, _, err = cli(capsys, "prune", run, "--keep-last", "1")
    assert status == 0, err
    status, out, _ = cli(capsys, "verify", run)
    kept = [line.split()[1] for line in out.splitlines() if line.startswith("OK")]
    assert "step_00001200" in kept and "step_00000400" not in kept


@pytest.mark.parametrize("location, refusal", [
    ("gs://bucket/run", "cannot store checkpoints at gs:// locations"),
    ("s3:/bucket/run", "is not a valid URL"),
    ("s3://Not_A_Bucket/run", "is not an S3 bucket name"),
])
def test_a_location_ckptlab_cannot_use_is_one_error_line_and_writes_nothing(
        tmp_path, monkeypatch, capsys, location, refusal):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, "train", "--run-dir", location, "--steps", "100")
    assert status == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("error:") and refusal in line
    assert list(tmp_path.iterdir()) == []  # no folder named s3: or gs:, nothing at all
