"""The work behind the live controls of the first three lessons (01 pipeline, 02 prediction,
03 loss curves).

Each ``*_view`` function takes the controls' values as keyword arguments and returns what the
lesson shows for them (a matplotlib figure and an HTML table); :func:`ckptlab.lab.widgets.show_live`
wires it to widgets. The ``*_controls`` functions build those widgets. Bad values (a stage that
does not exist, an index outside the replay buffer, a non-finite feature, an epsilon outside
[0, 1], an epoch the run does not have) raise :class:`~ckptlab.CkptlabError` with a message
saying what to do; the live view shows that message instead of a traceback.

Everything here is computed from the learner's real run: no value is canned.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..dqn.metrics import MetricHistory
from ..engine import CheckpointInfo, CkptlabError, verify_checkpoint
from .figures import OKABE_ITO, FigureView, caption, figure_view
from .lessons import (
    CARTPOLE_ACTIONS,
    CARTPOLE_FEATURES,
    PIPELINE_STAGES,
    draw_pipeline,
    epoch_trace_rows,
    plot_activations,
    plot_q_values,
    plot_training_curves,
    smooth,
)


def figure_png(fig: Any, text: str) -> FigureView:
    """Encode a figure with its caption ``text`` to display, in one draw.

    The views lay their figures out by hand, so no second "tight bounding box" draw is needed:
    this halves the time a control takes to answer.
    """
    return figure_view(caption(fig, text), tight=False)


# --------------------------------------------------------------------------------------------
# Lesson 1: the stage stepper
# --------------------------------------------------------------------------------------------


def pipeline_examples(*, initial_weights: Mapping[str, torch.Tensor], initial_epsilon: float,
                      initial_buffer: int, weight_changes: Sequence[Mapping[str, Any]],
                      checkpoint: CheckpointInfo, resumed_equal: Sequence[bool],
                      steps_after_resume: int, max_difference_after: float) -> tuple[str, ...]:
    """One sentence per pipeline stage, each made of this run's real values.

    Args:
        initial_weights: the Q-network's state dict right after the agent was built.
        initial_epsilon, initial_buffer: the exploration rate and buffer size at that moment.
        weight_changes: rows of :func:`~ckptlab.lab.lessons.parameter_changes` after training.
        checkpoint: the checkpoint saved after the training iteration (verified again here).
        resumed_equal: for each tensor, whether the resumed agent's copy equals the original's.
        steps_after_resume, max_difference_after: how far both agents trained on after the
            resume, and the largest weight difference between them then.
    """
    if not weight_changes or not resumed_equal:
        raise CkptlabError("pipeline_examples needs the weight changes and the resumed-tensor "
                           "comparison of the run; run the lesson's cells above first")
    numbers = sum(int(t.numel()) for t in initial_weights.values())
    first = (f"{numbers:,} random weights in {len(initial_weights)} tensors; replay buffer "
             f"{initial_buffer} transitions; epsilon {initial_epsilon:.2f}; step 0")
    manifest = checkpoint.manifest
    metrics = checkpoint.metrics
    biggest = max(weight_changes, key=lambda r: r["relative change"])
    moved = sum(1 for r in weight_changes if r["changed values"] > 0)
    loss = metrics.get("loss")
    second = (f"{manifest['step']} steps, {manifest['episode']} episodes finished; epsilon "
              f"{initial_epsilon:.2f} -> {metrics.get('epsilon', float('nan')):.3f}; "
              + (f"mean TD loss {loss:.3g}; " if loss is not None else "")
              + f"{moved} of {len(weight_changes)} tensors moved (most: {biggest['tensor']}, "
              f"{biggest['relative change']:.0%} relative change)")
    verified = verify_checkpoint(checkpoint.path)  # every file's hash checked again, now
    third = (f"{verified.name}: {len(verified.manifest['files']) + 1} files, "
             f"{verified.total_bytes / 1000:.0f} kB of "
             f"{', '.join(verified.manifest['components'])}; every hash verified")
    fourth = (f"{sum(map(bool, resumed_equal))} of {len(resumed_equal)} tensors bit-for-bit equal "
              f"after loading; {steps_after_resume} steps later the largest weight difference "
              f"from the uninterrupted agent is {max_difference_after:g}")
    return first, second, third, fourth


def pipeline_stage_view(stage: int, examples: Sequence[str]) -> list[Any]:
    """The pipeline diagram with ``stage`` (1-4) highlighted, and that stage's row: input,
    operation, output and this run's example (from :func:`pipeline_examples`)."""
    from IPython.display import HTML
    from matplotlib.figure import Figure

    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or \
            not 1 <= stage <= len(PIPELINE_STAGES):
        raise CkptlabError(f"stage must be a whole number from 1 to {len(PIPELINE_STAGES)}, "
                           f"not {stage!r}")
    if len(examples) != len(PIPELINE_STAGES):
        raise CkptlabError(f"need one example per stage ({len(PIPELINE_STAGES)}), got "
                           f"{len(examples)}; build them with pipeline_examples(...)")
    title, given, operation, output = PIPELINE_STAGES[stage - 1]
    fig = Figure(figsize=(11, 3.2))
    ax = fig.subplots()
    draw_pipeline(ax, highlight=stage - 1)
    cells = {"stage": title, "input": given, "operation": operation, "output": output,
             "this run": examples[stage - 1]}
    rows = "".join(f"<tr><th style='text-align:left;padding-right:12px'>{html.escape(k)}</th>"
                   f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
                   for k, v in cells.items())
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01)
    text = (f"The four-stage pipeline with stage {stage}, {title[3:].lower()}, highlighted; "
            f"in this run: {examples[stage - 1]}.")
    return [figure_png(fig, text), HTML(f"<table class='ckptlab-stage'>{rows}</table>")]


def pipeline_controls(stage: int = 1) -> dict[str, Any]:
    """The stage stepper: a slider over the four stages, starting at ``stage``."""
    import ipywidgets as widgets

    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or \
            not 1 <= stage <= len(PIPELINE_STAGES):
        raise CkptlabError(f"stage must be a whole number from 1 to {len(PIPELINE_STAGES)}, "
                           f"not {stage!r}")
    return {"stage": widgets.IntSlider(value=stage, min=1, max=len(PIPELINE_STAGES), step=1,
                                       description="stage", continuous_update=False)}


# --------------------------------------------------------------------------------------------
# Lesson 2: one prediction, live
# --------------------------------------------------------------------------------------------

OBSERVATION_SOURCES = ("replay buffer", "my features")


def observation_for(buffer_obs: np.ndarray, *, source: str, index: int,
                    features: Sequence[float]) -> np.ndarray:
    """The observation the learner picked: row ``index`` of the replay buffer's observations,
    or the four ``features`` typed in (in :data:`~ckptlab.lab.lessons.CARTPOLE_FEATURES`
    order)."""
    if source == "replay buffer":
        size = len(buffer_obs)
        if size == 0:
            raise CkptlabError("the replay buffer is empty: train the agent first")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or \
                not 0 <= index < size:
            raise CkptlabError(f"index must be a whole number from 0 to {size - 1} (the buffer "
                               f"holds {size} transitions), not {index!r}")
        return np.asarray(buffer_obs[index], dtype=np.float32).copy()
    if source == "my features":
        values = [float(v) for v in features]
        if len(values) != len(CARTPOLE_FEATURES):
            raise CkptlabError(f"need {len(CARTPOLE_FEATURES)} features "
                               f"({', '.join(CARTPOLE_FEATURES)}), got {len(values)}")
        bad = [name for name, v in zip(CARTPOLE_FEATURES, values) if not math.isfinite(v)]
        if bad:
            raise CkptlabError(f"{', '.join(bad)} must be a finite number; type a value such "
                               "as 0.05")
        return np.asarray(values, dtype=np.float32)
    raise CkptlabError(f"source must be one of {', '.join(OBSERVATION_SOURCES)}, not {source!r}")


def epsilon_action_shares(agent: Any, obs: np.ndarray, epsilon: float,
                          rng_state: Mapping[str, Any], decisions: int = 2000) -> np.ndarray:
    """The share of each action among ``decisions`` epsilon-greedy choices for ``obs``.

    Every choice is the agent's own ``act``; the draws come from a generator started at
    ``rng_state`` (a copy of the run's), so the run itself is not disturbed and the answer is
    the same every time.
    """
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and 0.0 <= epsilon <= 1.0):
        raise CkptlabError(f"epsilon must be a probability from 0 to 1, not {epsilon!r}")
    if int(decisions) < 1:
        raise CkptlabError(f"decisions must be at least 1, not {decisions!r}")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = dict(rng_state)
    # The agent's own act(), with its greedy choice for this one observation computed once:
    # the same decisions, without 2000 identical forward passes (keeps the control instant).
    once = _GreedyOnce(agent, obs)
    act = type(agent).act
    picks = [act(once, obs, epsilon, rng) for _ in range(int(decisions))]
    return np.bincount(picks, minlength=agent.n_actions) / len(picks)


class _GreedyOnce:
    """Stands in for an agent inside its ``act``: same action count, greedy action memoised."""

    def __init__(self, agent: Any, obs: np.ndarray) -> None:
        self.n_actions = agent.n_actions
        self._greedy = agent.greedy_action(obs)

    def greedy_action(self, obs: np.ndarray) -> int:
        return self._greedy


def prediction_view(agent: Any, buffer_obs: np.ndarray, rng_state: Mapping[str, Any], *,
                    source: str = "replay buffer", index: int = 0,
                    cart_position: float = 0.0, cart_velocity: float = 0.0,
                    pole_angle: float = 0.0, pole_velocity: float = 0.0,
                    epsilon: float = 0.1, decisions: int = 2000) -> list[Any]:
    """One decision of ``agent``, live: every layer's activations, the labelled Q-value panel,
    the greedy action, and the measured action shares at ``epsilon`` next to what
    epsilon-greedy predicts (greedy action ``1 - epsilon + epsilon/2``, the other
    ``epsilon/2``)."""
    from IPython.display import HTML
    from matplotlib.figure import Figure

    obs = observation_for(buffer_obs, source=source, index=index,
                          features=(cart_position, cart_velocity, pole_angle, pole_velocity))
    shares = epsilon_action_shares(agent, obs, epsilon, rng_state, decisions)
    x = torch.as_tensor(obs, dtype=torch.float32, device=agent.device).unsqueeze(0)
    with torch.no_grad():
        trace = agent.q_net.forward_trace(x)
    q_values = trace[-1][1].squeeze(0).cpu().numpy()
    greedy = int(np.argmax(q_values))
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(2, 3)
    plot_activations(trace[:-1], axes.flat[:-1])
    for ax in axes.flat[:-1]:  # a unit's index means nothing: no ticks to draw for it
        ax.set_xticks([])
        ax.locator_params(axis="y", nbins=4)
    plot_q_values(axes.flat[-1], q_values)
    what = f"replay buffer transition {index}" if source == "replay buffer" else "your features"
    fig.suptitle(f"{what}: greedy action = {CARTPOLE_ACTIONS[greedy]}")
    fig.subplots_adjust(left=0.05, right=0.98, top=0.86, bottom=0.1, hspace=0.45, wspace=0.4)
    n_actions = len(q_values)
    rows = []
    for i, name in enumerate(CARTPOLE_ACTIONS[:n_actions]):
        expected = (1 - epsilon if i == greedy else 0.0) + epsilon / n_actions
        rows.append(f"<tr><td>{html.escape(name)}{' (greedy)' if i == greedy else ''}</td>"
                    f"<td>{q_values[i]:.4g}</td><td>{shares[i]:.1%}</td>"
                    f"<td>{expected:.1%}</td></tr>")
    features = ", ".join(f"{n.split(' (')[0]} {v:+.3f}" for n, v in zip(CARTPOLE_FEATURES, obs))
    table = HTML(
        f"<p>observation: {html.escape(features)}</p>"
        "<table class='ckptlab-prediction'><thead><tr><th>action</th><th>Q-value</th>"
        f"<th>measured share of {int(decisions)} decisions at epsilon {epsilon:.2f}</th>"
        "<th>epsilon-greedy predicts</th></tr></thead><tbody>" + "".join(rows)
        + "</tbody></table>")
    other = 1 - greedy if n_actions == 2 else None
    text = (f"Every layer's activations for {what} and its Q-values "
            + ", ".join(f"{CARTPOLE_ACTIONS[i]} {q_values[i]:.3g}" for i in range(n_actions))
            + f": the greedy action is {CARTPOLE_ACTIONS[greedy]}"
            + (f"; at epsilon {epsilon:.2f} the other action was taken in {shares[other]:.1%} "
               f"of {int(decisions)} decisions (epsilon-greedy predicts {epsilon / 2:.1%})"
               if other is not None else "") + ".")
    return [figure_png(fig, text), table]


def prediction_controls(buffer_size: int, *, index: int = 0,
                        epsilon: float = 0.1) -> dict[str, Any]:
    """Where the observation comes from (a replay-buffer index, or four typed features) and
    the epsilon slider."""
    import ipywidgets as widgets

    if buffer_size < 1:
        raise CkptlabError("the replay buffer is empty: train the agent first")
    style = {"description_width": "initial"}
    features = {key: widgets.BoundedFloatText(value=0.0, min=-10.0, max=10.0, step=0.01,
                                              description=label, style=style,
                                              layout=widgets.Layout(width="230px"))
                for key, label in zip(("cart_position", "cart_velocity", "pole_angle",
                                       "pole_velocity"), CARTPOLE_FEATURES)}
    return {"source": widgets.ToggleButtons(options=OBSERVATION_SOURCES, value="replay buffer",
                                            description="observation from", style=style),
            "index": widgets.IntSlider(value=index, min=0, max=buffer_size - 1,
                                       description="buffer index", continuous_update=False),
            **features,
            "epsilon": widgets.FloatSlider(value=epsilon, min=0.0, max=1.0, step=0.05,
                                           description="epsilon", continuous_update=False)}


# --------------------------------------------------------------------------------------------
# Lesson 3: smoothing window and epoch cursor
# --------------------------------------------------------------------------------------------

#: The smoothing windows offered, evenly spaced on a log scale (1 update to 1000 updates).
SMOOTHING_WINDOWS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def epoch_table_html(rows: Sequence[Mapping[str, Any]], highlight_epoch: int) -> Any:
    """The epoch table with the cursor's row highlighted (and marked "▶", so it reads without
    colour too)."""
    from IPython.display import HTML

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else format(v, ".3g")
        return "-" if v is None else html.escape(str(v))

    cols = list(rows[0]) if rows else []
    head = "<th></th>" + "".join(f"<th style='text-align:left'>{html.escape(c)}</th>"
                                 for c in cols)
    body = []
    for r in rows:
        on = r["epoch"] == highlight_epoch
        style = " style='background:#fef3c7;font-weight:bold'" if on else ""
        body.append(f"<tr{style}><td>{'▶' if on else ''}</td>"
                    + "".join(f"<td style='text-align:left'>{cell(r[c])}</td>" for c in cols)
                    + "</tr>")
    return HTML(f"<table class='ckptlab-epochs'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")


def loss_curves_view(history: MetricHistory, *, window: int = 50, epoch: int = 1,
                     saved_steps: Sequence[int] = (),
                     resumed_at_step: int | None = None) -> list[Any]:
    """The loss and return curves with a moving average of ``window`` updates, the steps of
    ``epoch`` shaded, and the epoch table with that epoch's row highlighted."""
    from matplotlib.figure import Figure

    epochs = history.epochs
    if not epochs:
        raise CkptlabError("the run has no finished epoch yet: train at least one epoch")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise CkptlabError(f"window must be a whole number of updates, at least 1, not "
                           f"{window!r}")
    numbers = [e.epoch for e in epochs]
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or \
            epoch not in numbers:
        raise CkptlabError(f"epoch must be one of the run's epochs, {numbers[0]} to "
                           f"{numbers[-1]}, not {epoch!r}")
    at = numbers.index(epoch)
    start, end = (epochs[at - 1].end_step if at else 0), epochs[at].end_step
    fig = Figure(figsize=(11, 5.2))
    axes = fig.subplots(2, 1, sharex=True)
    plot_training_curves(history, axes, saved_steps=saved_steps,
                         resumed_at_step=resumed_at_step, window=int(window))
    for ax in axes:
        ax.axvspan(start, end, color=OKABE_ITO["yellow"], alpha=0.3, zorder=0)
    losses = history.losses
    in_epoch = (history.loss_steps > start) & (history.loss_steps <= end)
    jitter_raw = float(np.std(np.diff(losses))) if losses.size > 1 else float("nan")
    jitter = float(np.std(np.diff(smooth(losses, int(window))))) if losses.size > 1 \
        else float("nan")
    axes[0].set_title(f"moving average over {int(window)} updates: step-to-step jitter "
                      f"{jitter:.3g} (raw {jitter_raw:.3g}); epoch {epoch} shaded "
                      f"(steps {start + 1}-{end}, {int(in_epoch.sum())} updates)",
                      fontsize="medium")
    axes[1].legend(loc="upper left")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.1, hspace=0.25)
    rows = epoch_trace_rows(history, saved_steps, resumed_at_step=resumed_at_step)
    text = (f"Loss per update (log scale) with a moving average over {int(window)} updates, "
            f"and the return per episode with the greedy evaluations; epoch {epoch} (steps "
            f"{start + 1}-{end}) shaded; the moving average cuts the step-to-step jitter from "
            f"{jitter_raw:.3g} to {jitter:.3g}.")
    return [figure_png(fig, text), epoch_table_html(rows, epoch)]


def loss_curves_controls(epochs: int, *, window: int = 50) -> dict[str, Any]:
    """The smoothing-window slider (log-spaced choices) and the epoch cursor."""
    import ipywidgets as widgets

    if epochs < 1:
        raise CkptlabError("the run has no finished epoch yet: train at least one epoch")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise CkptlabError(f"window must be a whole number of updates, at least 1, not "
                           f"{window!r}")
    options = sorted({*SMOOTHING_WINDOWS, int(window)})  # the lesson's own window is offered
    return {"window": widgets.SelectionSlider(options=options, value=int(window),
                                              description="window (log)",
                                              style={"description_width": "initial"},
                                              continuous_update=False),
            "epoch": widgets.IntSlider(value=1, min=1, max=epochs, description="epoch",
                                       continuous_update=False)}
