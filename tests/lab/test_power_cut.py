"""Lesson 7's power-cut control: one save's timeline, a crash point, a persistence model and a
fault, and the disk a power cut would leave (issue 27)."""

from __future__ import annotations

import matplotlib
import pytest

from ckptlab.engine import CkptlabError
from ckptlab.lab.power_cut import FAULTS, PowerCutLab, short

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return PowerCutLab(tmp_path_factory.mktemp("power-cut"))


def test_the_save_is_shown_call_by_call_without_random_tags(lab):
    calls = lab.calls()
    assert calls[0] == " 1  mkdir .tmp-step_00000003"
    commit = lab.crash_point_after("rename .tmp-step_00000003 -> step_00000003")
    assert "fsync .tmp-step_00000003/tensors.safetensors" in "\n".join(calls[:commit])
    assert calls[commit - 1].endswith("rename .tmp-step_00000003 -> step_00000003")
    assert lab.call_count("no-tensor-fsync") == lab.call_count() - 1
    assert short("run/checkpoints/.tmp-latest-0123abcd") == ".tmp-latest"
    assert short("run/checkpoints") == "checkpoints/"


def test_with_the_real_order_every_crash_point_recovers(lab):
    # (the adversarial model over every crash point: tests/engine, save-best-moves)
    survey = lab.survey("ordered")
    assert survey.crash_states > 0 and survey.violating_states == 0, survey.violations
    assert lab.power_cut(lab.call_count() - 2, "adversarial").violating == 0


def test_without_the_tensor_fsync_a_returned_save_is_torn_and_latest_lies(lab):
    end = lab.call_count("no-tensor-fsync")
    cut = lab.power_cut(end, "ordered", "no-tensor-fsync")
    assert cut.violating > 0 and {"not-durable", "torn-committed"} <= {i for i, _ in cut.found}
    verdicts = dict(cut.verdicts)
    assert verdicts["step_00000003"].startswith("REJECTED: tensors.safetensors has 0 bytes")
    assert cut.latest == "step_00000003" and cut.resume == "step_00000002"
    # the control: the same moment of the real save leaves only the new state
    healthy = lab.power_cut(lab.call_count(), "ordered", "none")
    assert healthy.violating == 0 and healthy.resume == "step_00000003"


def test_the_view_draws_the_figure_and_the_table_for_every_choice(lab):
    figure, table = lab.view(lab.call_count() + 5, "ordered", "no-directory-fsync")  # clamped
    assert hasattr(figure, "savefig")
    assert "break an invariant" in table.data and "not-durable" in table.data
    import matplotlib.pyplot as plt

    plt.close(figure)
    for fault in FAULTS:
        figure, _ = lab.view(3, "ordered", fault)
        plt.close(figure)


def test_bad_choices_are_refused_with_the_way_out(lab):
    with pytest.raises(CkptlabError, match="choose a crash point from 0 to"):
        lab.power_cut(99, "ordered")
    with pytest.raises(CkptlabError, match="persistence model"):
        lab.power_cut(1, "ext2")
    with pytest.raises(CkptlabError, match="unknown fault"):
        lab.power_cut(1, "ordered", "no-fsync-at-all")
    with pytest.raises(CkptlabError, match="no call of the save matches"):
        lab.crash_point_after("format the disk")
