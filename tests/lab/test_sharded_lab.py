"""Lesson 9's drawing functions, on recorded metrics (no process group needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ckptlab.lab.sharded_lab import (  # noqa: E402
    first_loss_difference,
    reshard_figure,
    restart_figure,
)


def _metrics(losses, returns):
    return {"loss_steps": list(range(10, 10 + 10 * len(losses), 10)), "losses": losses,
            "episode_end_steps": list(range(50, 50 + 50 * len(returns), 50)),
            "episode_returns": returns}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_restart_figure_measures_the_differences_it_draws():
    a = _metrics([1.0] * 30, [10.0, 20.0, 30.0])
    fig, differences = restart_figure(a, _metrics([1.0] * 30, [10.0, 20.0, 30.0]), 100)
    assert differences == {"losses": 0.0, "episode_returns": 0.0}
    assert len(fig.axes) == 4
    fig, differences = restart_figure(a, _metrics([1.0] * 29 + [3.0], [10.0, 25.0, 30.0]), 100)
    assert differences["episode_returns"] == 5.0
    assert differences["losses"] > 0  # the moving average carries the last loss's change
    with pytest.raises(ValueError, match="different number of losses"):
        restart_figure(a, _metrics([1.0] * 3, [10.0, 20.0, 30.0]), 100)


def test_the_first_difference_and_the_reshard_figure():
    a = _metrics([1.0, 2.0, 3.0, 4.0], [1.0])
    assert first_loss_difference(a, a) is None
    assert first_loss_difference(a, _metrics([1.0, 2.0, 3.5, 4.0], [1.0])) == 30
    fig = reshard_figure(a, _metrics([1.0, 2.0, 3.5, 4.0], [1.0]), 20)
    assert [line.get_label() for line in fig.axes[0].get_lines()][:2] == \
        ["2 ranks", "resharded onto 1 rank"]
