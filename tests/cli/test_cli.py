"""The CLI: train / resume / finished messages, inspect, verify, and every error path.

Error paths must print one line starting with 'error:', exit non-zero, show no traceback and
leave every existing file untouched.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from ckptlab.cli import main
from ckptlab.engine import TENSORS
from conftest import FAST, run_cli, tree_digest

SMALL = {**FAST, "total_steps": 800, "save_every_steps": 400}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, config_file) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "--run-dir", str(run_dir), "--config", str(config_file),
                 "--quiet"]) == 0
    return run_dir


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_train_finishes_then_says_it_is_finished(finished_run, config_file, capsys):
    capsys.readouterr()
    assert main(["train", "--run-dir", str(finished_run), "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "step 800 of 800" in out and "--steps" in out


def test_extending_a_finished_run_resumes_with_one_clear_line(tmp_path, finished_run,
                                                              config_file, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--config", str(config_file),
                 "--steps", "1200", "--quiet"]) == 0
    out = capsys.readouterr().out
    resume_lines = [line for line in out.splitlines() if line.startswith("Resuming from")]
    assert len(resume_lines) == 1 and "step 800 of 1200" in resume_lines[0]
    assert (run_dir / "checkpoints" / "step_00001200").is_dir()


def test_inspect_shows_components_and_sizes(finished_run, capsys):
    capsys.readouterr()
    assert main(["inspect", str(finished_run)]) == 0
    out = capsys.readouterr().out
    for word in ("agent", "replay_buffer", "env", "rng", "metrics", "q_net/layers.0.weight",
                 "tensors.safetensors", "sha256", "CartPole-v1", "valid"):
        assert word in out, word
    assert main(["inspect", str(finished_run / "checkpoints" / "step_00000400"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["step"] == 400 and data["status"] == "valid"
    sizes = {k: v["total_bytes"] for k, v in data["components"].items()}
    assert sizes["replay_buffer"] > sizes["progress"] > 0


def test_verify_ok_then_fails_on_corruption(tmp_path, finished_run, capsys):
    import shutil

    assert main(["verify", str(finished_run)]) == 0
    assert "2 of 2 checkpoint(s) valid" in capsys.readouterr().out
    broken = tmp_path / "broken"
    shutil.copytree(finished_run, broken)
    tensors = broken / "checkpoints" / "step_00000800" / TENSORS
    data = bytearray(tensors.read_bytes())
    data[100] ^= 1
    tensors.write_bytes(bytes(data))
    assert main(["verify", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  step_00000800" in out and "SHA-256" in out and "1 of 2" in out


def test_resume_auto_falls_back_past_a_corrupt_checkpoint(tmp_path, finished_run, config_file,
                                                          capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "checkpoints" / "step_00000800" / TENSORS).write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--config", str(config_file),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipping unusable checkpoint" in captured.err
    assert "Resuming from" in captured.out and "step_00000400" in captured.out


def test_error_paths_one_line_and_nothing_changed(tmp_path, finished_run, config_file, capsys):
    before = tree_digest(finished_run)
    pickled = tmp_path / "agent.pt"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    run = str(finished_run)
    cases = [
        (["inspect", str(tmp_path / "missing")], "does not exist"),
        (["verify", str(tmp_path / "missing")], "does not exist"),
        (["inspect", str(pickled)], "never unpickles"),
        (["verify", str(pickled)], "never unpickles"),
        (["train", "--run-dir", run, "--resume", "never"], "already holds checkpoints"),
        (["train", "--run-dir", run, "--env", "Acrobot-v1"], "env_id"),
        (["train", "--run-dir", str(tmp_path / "new"), "--resume", str(pickled)],
         "never unpickles"),
        (["train", "--run-dir", str(tmp_path / "new"), "--resume", str(tmp_path / "nowhere")],
         "does not exist"),
        (["train", "--run-dir", str(not_a_dir)], "not a directory"),
        (["train", "--run-dir", str(tmp_path / "new"), "--env", "NoSuchEnv-v0"],
         "cannot create environment"),
        (["train", "--run-dir", str(tmp_path / "new"), "--env", "Pendulum-v1"],
         "discrete action"),
        (["train", "--run-dir", str(tmp_path / "new"), "--config", str(not_a_dir)],
         "not readable JSON"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        line = one_error_line(capsys)
        assert message in line, (argv, line)
    assert tree_digest(finished_run) == before
    assert not (tmp_path / "new").exists(), "a failed command created a run directory"


def test_resume_path_of_another_architecture_is_refused(tmp_path, finished_run, capsys):
    other_cfg = tmp_path / "wide.json"
    other_cfg.write_text(json.dumps({**SMALL, "hidden_sizes": [32]}))
    capsys.readouterr()
    code = main(["train", "--run-dir", str(tmp_path / "new"), "--resume", str(finished_run),
                 "--config", str(other_cfg)])
    assert code == 2
    line = one_error_line(capsys)
    assert "hidden_sizes" in line and "(64, 64)" in line


@pytest.mark.parametrize("argv", [
    ["train"], ["train", "--run-dir", "x", "--steps", "abc"],
    ["train", "--run-dir", "x", "--steps", "-5"], ["train", "--run-dir", "x", "--steps", "0"],
    ["train", "--run-dir", "x", "--keep-last", "0"], ["launch"], [],
    ["train", "--run-dir", "x", "--device", "tpu"],
])
def test_nonsense_arguments(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_real_process_error_has_no_traceback(tmp_path):
    done = run_cli("verify", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_demo_kills_resumes_and_reports_identical(capsys):
    assert main(["demo", "--steps", "1500", "--kill-at", "1100"]) == 0
    out = capsys.readouterr().out
    assert "killed with SIGKILL after step 1100" in out
    assert "resumed from the checkpoint at step 0" in out or "step 1000" in out
    assert "bit-for-bit identical" in out and "DIFFERENT" not in out


@pytest.mark.parametrize("argv,message", [
    (["demo", "--steps", "100", "--kill-at", "200"], "must be smaller"),
])
def test_demo_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_library_refuses_to_overwrite_a_run_without_restore(finished_run):
    from ckptlab import CkptlabError, DQNConfig, Trainer

    before = tree_digest(finished_run)
    trainer = Trainer(DQNConfig(**SMALL), finished_run)
    with pytest.raises(CkptlabError, match="call restore"):
        trainer.train()
    trainer.close()
    assert tree_digest(finished_run) == before


# --- issue 3: lineage, config drift, ls, export, prune ------------------------------------

def manifest_of(ckpt: Path) -> dict:
    return json.loads((ckpt / "manifest.json").read_text())


def test_resume_into_a_new_run_records_lineage_and_leaves_the_original(tmp_path, finished_run,
                                                                     config_file, capsys):
    before = tree_digest(finished_run)
    parent = finished_run / "checkpoints" / "step_00000400"
    new_run = tmp_path / "branch"
    assert main(["train", "--run-dir", str(new_run), "--resume", str(parent), "--config",
                 str(config_file), "--save-every", "200", "--quiet"]) == 0
    assert "Resuming from" in capsys.readouterr().out
    assert tree_digest(finished_run) == before, "the parent run was modified"
    manifest = manifest_of(new_run / "checkpoints" / "step_00000800")
    lineage = manifest["lineage"]["parent"]
    assert lineage["step"] == 400 and lineage["path"] == str(parent.resolve())
    assert lineage["manifest_sha256"] == manifest_of(parent)["manifest_sha256"]
    assert lineage["config_changes"] == [
        {"field": "save_every_steps", "old": 400, "new": 200, "role": "bookkeeping"}]
    # Auto-resuming the branch later keeps its lineage.
    assert main(["train", "--run-dir", str(new_run), "--steps", "1000", "--quiet"]) == 0
    assert manifest_of(new_run / "checkpoints" / "step_00001000")["lineage"]["parent"][
        "step"] == 400


def test_config_drift_is_refused_with_a_diff_unless_allowed(tmp_path, finished_run, capsys):
    parent = finished_run / "checkpoints" / "step_00000400"
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps({**SMALL, "learning_rate": 0.01, "gamma": 0.9}))
    argv = ["train", "--run-dir", str(tmp_path / "b"), "--resume", str(parent), "--config",
            str(drift), "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "learning_rate: 0.0025 -> 0.01" in line and "gamma: 0.99 -> 0.9" in line
    assert "--allow-config-change" in line
    assert not (tmp_path / "b").exists()
    assert main(argv + ["--allow-config-change"]) == 0
    changes = manifest_of(tmp_path / "b" / "checkpoints" / "step_00000800")["lineage"][
        "parent"]["config_changes"]
    assert {c["field"] for c in changes} == {"learning_rate", "gamma"}


def test_ls_sorts_across_runs(tmp_path, finished_run, capsys):
    import shutil

    shutil.copytree(finished_run, tmp_path / "runs" / "one")
    shutil.copytree(finished_run, tmp_path / "runs" / "two")
    capsys.readouterr()
    assert main(["ls", str(tmp_path / "runs"), "--sort", "eval_return", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "4 checkpoint(s)" in out and len(out.strip().splitlines()) == 2 + 3
    assert main(["ls", str(tmp_path / "runs"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["run"] for r in rows} == {"one", "two"} and all(r["status"] == "valid"
                                                            for r in rows)
    assert main(["ls", str(tmp_path / "runs"), "--sort", "no_such_metric"]) == 2
    assert "known: " in one_error_line(capsys)


def test_export_and_its_errors(tmp_path, finished_run, capsys):
    assert main(["export", str(finished_run), "--out", str(tmp_path / "w"), "--what",
                 "weights"]) == 0
    assert (tmp_path / "w" / "weights.safetensors").is_file()
    assert not (tmp_path / "w" / "metadata.json").exists()
    capsys.readouterr()
    assert main(["export", str(finished_run), "--out", str(tmp_path / "w"), "--what",
                 "weights"]) == 2
    assert "nothing was overwritten" in one_error_line(capsys)
    assert main(["export", str(finished_run), "--out", str(tmp_path / "x"), "--tensors",
                 "agent/nope"]) == 2
    assert "agent/nope" in one_error_line(capsys)


def test_prune_dry_run_explains_and_changes_nothing(tmp_path, finished_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = tree_digest(run)
    capsys.readouterr()
    assert main(["prune", str(run), "--keep-last", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert tree_digest(run) == before
    assert "would delete step_00000400" in out and "not among the 1 newest" in out
    assert "nothing was changed" in out
    assert main(["prune", str(run), "--keep-last", "1"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000800"]
    assert main(["prune", str(run)]) == 2
    assert "give at least one rule" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["train", "inspect", "verify", "ls", "export", "prune",
                                     "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_save_policies_from_the_command_line(tmp_path, config_file, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--config", str(config_file),
                 "--save-every", "0", "--save-on-start", "--save-on-improvement",
                 "--keep-top", "1", "--quiet"]) == 0
    ckpts = tmp_path / "r" / "checkpoints"
    steps = sorted(int(p.name[5:]) for p in ckpts.glob("step_*"))
    assert 800 in steps  # final, and the latest is never deleted
    log = [json.loads(line) for line in (ckpts / "decisions.jsonl").read_text().splitlines()]
    saved = [e["step"] for e in log if e["event"] == "saved"]
    assert saved[0] == 0, "no baseline was saved before training"
    reasons = [manifest_of(ckpts / f"step_{s:08d}")["save_reasons"] for s in steps]
    assert ["final"] in reasons or any("final" in r for r in reasons)
    best = json.loads((ckpts / "best").read_text())["checkpoint"]
    assert (ckpts / best).is_dir()
