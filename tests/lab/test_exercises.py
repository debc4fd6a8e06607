"""Exercise checks: pass on a correct answer, a specific message for each kind of wrong answer,
"not done yet" (never a crash) for the unchanged template, and hints only after a failure."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from ckptlab import DQNConfig, Trainer
from ckptlab.engine.policies import EveryNSteps, Hybrid, KeepLastN
from ckptlab.lab import exercises as ex
from ckptlab.lab.retention_lab import Strategy

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def solutions() -> dict[str, str]:
    """Lesson stem -> the tested solution code in notebooks/solutions.ipynb."""
    nb = nbformat.read(NOTEBOOKS / "solutions.ipynb", as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.metadata.get("ckptlab", {})
        if "solution_for" in meta:
            out[meta["solution_for"]] = re.search(r"```python\n(.*?)```", cell.source,
                                                  re.S).group(1)
    return out


def template(stem: str) -> str:
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if "exercise" in c.metadata.get("ckptlab", {}))


def not_done(result):
    return result.passed is None and "Hint" not in str(result)


def failed(result, *words):
    text = result.message.lower()
    return result.passed is False and all(w.lower() in text for w in words) and \
        "Hint:" in str(result) and "Traceback" not in text


def test_every_lesson_has_an_exercise_with_a_tested_solution():
    # Each solution also runs in its lesson's kernel after "Run all", under nbval (conftest.py
    # at the repository root adds that check to every lesson).
    lessons = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                     if p.stem != "00_start_here")
    assert sorted(solutions()) == lessons
    for stem in lessons:
        assert template(stem) and solutions()[stem].strip(), stem


# -- hints -----------------------------------------------------------------------------------
def test_hint_only_after_a_failed_attempt_or_on_request():
    blank = ex.check_lost_steps(None, 1500, 7200)
    assert blank.passed is None and "Hint" not in str(blank) and "Hint" not in blank._repr_html_()
    assert "hint('lost_steps')" in blank.message  # how to ask for one
    wrong = ex.check_lost_steps(99, 1500, 7200)
    assert "Hint:" in str(wrong) and "Hint" in wrong._repr_html_()
    right = ex.check_lost_steps(1200, 1500, 7200)
    assert right.passed and "Hint" not in str(right)
    assert ex.hint("lost_steps") == ex.HINTS["lost_steps"]
    with pytest.raises(KeyError, match="known"):
        ex.hint("nope")


def test_hints_are_not_the_solutions():
    for stem, code in solutions().items():
        lines = [line.strip() for line in code.splitlines() if len(line.strip()) > 25]
        for text in ex.HINTS.values():
            assert not any(line in text for line in lines), (stem, text)
    assert "argmax" not in ex.HINTS["greedy"] and "sorted(" not in " ".join(ex.HINTS.values())


def test_no_exercise_cell_holds_its_answer_and_templates_are_not_done():
    sols = solutions()
    for stem, code in sols.items():
        cell = template(stem)
        assert "raise NotImplementedError" in cell or "= None" in cell, stem
        assert "expected" not in cell, stem
    assert '"env"' not in template("05_what_goes_in_a_checkpoint").split("check_omission")[1]


# -- lesson 1 --------------------------------------------------------------------------------
SMALL = DQNConfig(seed=0, hidden_sizes=(16, 16), learning_starts=100, total_steps=50_000,
                  save_every_steps=0, buffer_capacity=2_000)


def lesson1_solution():
    ns = {"Trainer": Trainer, "config": SMALL}
    exec(solutions()["01_pipeline_trace"], ns)
    return ns["largest_difference_without_optimizer"]


def test_skip_optimizer_check():
    run = lambda fn: ex.check_skip_optimizer(fn, SMALL, checkpoint_step=300, steps=200)  # noqa
    good = lesson1_solution()
    result = run(good)
    assert result.passed, result
    value = float(re.search(r"difference ([0-9.e+-]+)", result.message).group(1))
    assert value > 0
    ns = {}
    exec(template("01_pipeline_trace").split("check_skip_optimizer(")[0]
         .replace("from ckptlab.lab.exercises import check_skip_optimizer, hint", ""), ns)
    assert not_done(run(ns["largest_difference_without_optimizer"]))
    assert not_done(run(None))
    assert failed(run(lambda c, w, s: 0.0), "optimizer was restored")
    assert failed(run(lambda c, w, s: "big"), "str", "one number")
    assert failed(run(lambda c, w, s: -good(c, w, s)), "negative")
    assert failed(run(lambda c, w, s: 1 / 0), "ZeroDivisionError")

    def full_restore(checkpoint, weights, steps):  # forgot to skip the optimizer
        with Trainer(SMALL) as t:
            t.restore(checkpoint)
            t.train(until_step=t.progress.step + steps)
            return max((v - weights[k]).abs().max().item()
                       for k, v in t.agent.q_net.state_dict().items())
    assert failed(run(full_restore), "0 means")

    def no_training(checkpoint, weights, steps):  # compared right after the restore
        with Trainer(SMALL) as t:
            t.restore(checkpoint)
            return max((v - weights[k]).abs().max().item()
                       for k, v in t.agent.q_net.state_dict().items())
    assert failed(run(no_training), "train the restored trainer")

    def one_step_short(checkpoint, weights, steps):
        return good(checkpoint, weights, steps - 1)
    assert failed(run(one_step_short), "exactly 200 steps")


# -- lessons 2, 3, 4 -------------------------------------------------------------------------
def test_greedy_check_messages():
    qs = [np.array([0.1, 0.7]), np.array([2.0, -1.0])]
    assert ex.check_greedy_policy(lambda q: int(np.argmax(q)), qs).passed
    assert failed(ex.check_greedy_policy(lambda q: int(np.argmin(q)), qs), "lowest")
    assert failed(ex.check_greedy_policy(lambda q: q.max(), qs), "whole number")
    assert failed(ex.check_greedy_policy(lambda q: 0, [np.array([1.0, 0.0])]), "lowest")
    assert failed(ex.check_greedy_policy(lambda q: 1 / 0, qs), "ZeroDivisionError")
    assert failed(ex.check_greedy_policy(42, qs), "expected a function")

    def template_greedy(q):
        raise NotImplementedError
    assert not_done(ex.check_greedy_policy(template_greedy, qs))


def test_moving_average_check_messages():
    values = [1.0, 5.0, 3.0, 7.0, 2.0, 8.0]
    good = lambda v, w: [float(np.mean(v[max(0, i - w + 1): i + 1])) for i in range(len(v))]  # noqa
    assert ex.check_moving_average(good, values, 3).passed
    assert failed(ex.check_moving_average(lambda v, w: good(v, w + 1), values, 3), "off by one")
    valid = lambda v, w: [float(np.mean(v[i - w + 1: i + 1])) for i in range(w - 1, len(v))]  # noqa
    assert failed(ex.check_moving_average(valid, values, 3), "4 points", "start at index")
    assert failed(ex.check_moving_average(lambda v, w: v, values, 3), "unchanged")
    assert failed(ex.check_moving_average(lambda v, w: object(), values, 3), "list of numbers")


def test_lost_steps_check_messages():
    assert ex.check_lost_steps(1200, 1500, 7200).passed
    assert ex.check_lost_steps(np.int64(1200), 1500, 7200).passed
    assert failed(ex.check_lost_steps(1201, 1500, 7200), "off by one")
    assert failed(ex.check_lost_steps(7200, 1500, 7200), "every step")
    assert failed(ex.check_lost_steps(1500, 1500, 7200), "whole interval")
    assert failed(ex.check_lost_steps(6000, 1500, 7200), "where the resume starts")
    assert failed(ex.check_lost_steps("1200", 1500, 7200), "not a number")
    assert failed(ex.check_lost_steps(1200.5, 1500, 7200), "whole number")
    assert not_done(ex.check_lost_steps(None, 1500, 7200))


# -- lesson 5 --------------------------------------------------------------------------------
def test_mystery_is_drawn_by_seed_from_several_cases():
    assert ex.mystery_piece(3) == ex.mystery_piece(3)
    assert {ex.mystery_piece(s) for s in range(50)} == set(ex.MYSTERY_PIECES)
    assert len(ex.MYSTERY_PIECES) >= 3


def test_omission_check_reads_the_answer_from_the_run():
    mystery = ex.MysteryRun("env", after=None, reference=None)
    assert "env" not in repr(mystery)
    assert ex.check_omission("env", mystery).passed
    assert ex.check_omission("rng", ex.MysteryRun("rng", None, None)).passed
    assert failed(ex.check_omission("rng", mystery), "from the very first update")
    assert failed(ex.check_omission("weights", mystery), "not this run")
    assert failed(ex.check_omission("the wifi", mystery), "not one of")
    assert failed(ex.check_omission(3, mystery), "int", "string")
    assert not_done(ex.check_omission(None, mystery))


@pytest.fixture(scope="module")
def lesson5_runs(tmp_path_factory):
    from ckptlab.lab.ablation import continue_training

    config = DQNConfig(seed=0, total_steps=10**6, learning_starts=500, save_every_steps=2000)
    work = tmp_path_factory.mktemp("lesson5")
    original = Trainer(config, work / "run")
    original.train(until_step=2000)
    checkpoint = original.checkpoints.committed()[-1]
    reference = continue_training(original, 2000, eval_key_step=4000)
    original.close()
    return config, checkpoint, reference


@pytest.mark.parametrize("piece", ex.MYSTERY_PIECES)
def test_each_mystery_case_is_solvable_from_its_clues(lesson5_runs, piece, monkeypatch):
    """The lesson's solution reads the clues of the real run and names the missing piece."""
    config, checkpoint, reference = lesson5_runs
    seed = next(s for s in range(100) if ex.mystery_piece(s) == piece)
    mystery = ex.draw_mystery(seed, checkpoint, config, 2000, reference, eval_key_step=4000)
    ns = {"mystery": mystery}
    exec(solutions()["05_what_goes_in_a_checkpoint"], ns)
    assert ex.check_omission(ns["answer"], mystery).passed, mystery.clues()


# -- lesson 6 --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    config = DQNConfig(seed=0, hidden_sizes=(32, 32), total_steps=4000, steps_per_epoch=500,
                       save_every_steps=500, learning_starts=500, eval_episodes=3)
    work = tmp_path_factory.mktemp("lesson6")
    with Trainer(config, work / "recorded") as trainer:
        trainer.train()
    recorded = trainer.checkpoints.committed()
    from ckptlab.engine import checkpoint_step, read_manifest

    returns = {checkpoint_step(p): read_manifest(p)["metrics"]["eval_return"] for p in recorded}
    best = max(returns, key=lambda s: (returns[s], -s))
    size = sum(f.stat().st_size for f in recorded[-1].iterdir())
    return recorded, best, size, config.total_steps


def test_retention_choice_check(recorded_run):
    recorded, best, size, total = recorded_run
    run = lambda choice, lost=1000: ex.check_retention_choice(  # noqa
        choice, recorded, best, int(2.5 * size), lost, total_steps=total)
    ns = {"Strategy": Strategy, "Hybrid": Hybrid, "KeepLastN": KeepLastN}
    exec(solutions()["06_retention_strategies"], ns)
    result = run(ns["choice"])
    assert result.passed, result
    assert not_done(run(None))
    assert failed(run({"keep": 3}), "dict", "Strategy(")
    assert failed(run(Strategy("all")), "over the budget")
    from ckptlab.engine import checkpoint_step

    if best not in [checkpoint_step(p) for p in recorded[-2:]]:
        assert failed(run(Strategy("last 2", retention=[KeepLastN(2)], protect_best=False)),
                      f"best policy (step {best}) was saved, then deleted")
    assert failed(run(Strategy("rare", save_policy=Hybrid("eval_return", 2000),
                               retention=[KeepLastN(1)])), "would lose")
    assert failed(run(ns["choice"], lost=10), "would lose")
    if best % 1000:  # the best was at an odd 500: a plain every-1000 policy never saves it
        assert failed(run(Strategy("every 1000", save_policy=EveryNSteps(1000),
                                   retention=[KeepLastN(1)])), "never saved")


def test_retention_judge_measures_the_crash_loss():
    class Outcome:
        alive = [(500, [500]), (1000, [500]), (1500, [1500])]
        disk_bytes = [(500, 10), (1000, 10), (1500, 12)]
        final_steps = [1500]
    verdict = ex.judge_strategy(Outcome, best_step=1500, total_steps=1500)
    # a crash at step 1499 resumes from 500: 999 steps lost
    assert (verdict.worst_loss, verdict.worst_crash_step) == (999, 1499)
    assert verdict.peak_bytes == 12 and verdict.best_kept


# -- lesson 7 --------------------------------------------------------------------------------
def test_find_corrupt_check(tmp_path):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    for name in ("tensors.safetensors", "state.json"):
        (ckpt / name).write_bytes(name.encode() * 10)
    files = {n: {"sha256": hashlib.sha256((ckpt / n).read_bytes()).hexdigest()}
             for n in ("tensors.safetensors", "state.json")}
    (ckpt / "manifest.json").write_text(json.dumps({"files": files}))
    ns = {"json": json, "hashlib": hashlib}
    exec(solutions()["07_failure_modes"], ns)
    assert ex.check_find_corrupt(ns["find_corrupt"], ckpt).passed
    as_path = lambda p: next((p / n for n in ("tensors.safetensors",)  # noqa
                              if ns["find_corrupt"](p)), None)
    assert failed(ex.check_find_corrupt(as_path, ckpt), "path")
    assert failed(ex.check_find_corrupt(lambda p: "state.json", ckpt), "intact", "None")
    assert failed(ex.check_find_corrupt(lambda p: None, ckpt), "not noticed")
    assert failed(ex.check_find_corrupt(lambda p: ["state.json"] if ns["find_corrupt"](p)
                                        else None, ckpt), "list")

    def template_fn(p):
        raise NotImplementedError
    assert not_done(ex.check_find_corrupt(template_fn, ckpt))
    gone = ex.check_find_corrupt(ns["find_corrupt"], tmp_path / "missing")
    assert gone.passed is None and "run the lesson" in gone.message


# -- lesson 8 --------------------------------------------------------------------------------
def loop(code: str):
    ns = {"torch": torch}
    exec(code, ns)
    return ns["my_training"]


def test_own_loop_check():
    good = solutions()["08_review"]
    result = ex.check_own_loop(loop(good))
    assert result.passed, result
    assert "bit for bit" in result.message and "progress" in result.message
    ns = {"torch": torch, "check_own_loop": lambda *a, **k: None}
    exec(template("08_review").replace("from ckptlab.lab.exercises import check_own_loop, hint",
                                       ""), ns)
    assert not_done(ex.check_own_loop(ns["my_training"]))
    assert failed(ex.check_own_loop(loop(good.replace("manager.restore_latest()", "pass"))),
                  "started again from step 1")
    no_data = good.replace('"data": self.data.get_state()', '"kind": "no data"').replace(
        'self.data.set_state(state["data"])', 'pass')
    assert failed(ex.check_own_loop(loop(no_data)), "differs", "model/weight")
    assert failed(ex.check_own_loop(loop(good.replace(
        'manager.register("optimizer", optimizer)', ''))), "['optimizer'] not in")
    assert failed(ex.check_own_loop(loop(good.replace("manager.save(progress.step)", "pass"))),
                  "nothing was saved")
    assert failed(ex.check_own_loop(loop(good.replace(
        'return {"model": model, "optimizer": optimizer, "progress": progress}',
        'return model'))), "return a dict")
    assert failed(ex.check_own_loop(loop(good.replace(
        'manager.register("progress", progress)', 'pass'))), "['progress'] not in")
    assert failed(ex.check_own_loop(loop(good.replace('"progress": progress}', '}'))),
                  "own class")
    assert failed(ex.check_own_loop(lambda d, n, after: 1 / 0), "ZeroDivisionError")
    unlocked = good.replace("with CheckpointManager(run_dir) as manager:",
                            "if True:\n        manager = CheckpointManager(run_dir)")
    # A real SIGKILL (forked process) releases the dead writer's lock, as a crash would:
    assert ex.check_own_loop(loop(unlocked)).passed


def test_own_loop_check_without_fork(monkeypatch):
    """Where fork is unavailable the loop is stopped by an exception inside it instead."""
    monkeypatch.setattr(ex.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    good = solutions()["08_review"]
    assert ex.check_own_loop(loop(good)).passed
    assert failed(ex.check_own_loop(loop(good.replace("manager.restore_latest()", "pass"))),
                  "started again from step 1")
    unlocked = good.replace("with CheckpointManager(run_dir) as manager:",
                            "if True:\n        manager = CheckpointManager(run_dir)")
    locked = ex.check_own_loop(loop(unlocked))  # the stopped loop never closed its manager
    assert failed(locked, "with CheckpointManager(...) as manager")
    assert "writer lock" in locked.message
    assert not re.search(r"/(tmp|root|work|home)/", locked.message)
    assert not_done(ex.check_own_loop(None))
