"""What the lessons show, computed from real ckptlab objects: tables and plots.

The notebooks call these; they never re-implement training or checkpointing. Each function
names the notebook that introduces it (the d2l convention).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dqn.metrics import MetricHistory
from ..engine import MANIFEST, CkptlabError, describe_digest, read_manifest
from .determinism import make_gpu_deterministic
from .figures import OKABE_ITO, ROLE

# The lessons assert bit-exact resumes, which on a GPU need deterministic kernels. Every lesson
# imports this module before it trains, so they are switched on here (nothing changes on a CPU;
# see ckptlab.lab.determinism and lesson 4).
make_gpu_deterministic()

# --------------------------------------------------------------------------------------------
# Lesson 1: the pipeline
# --------------------------------------------------------------------------------------------

PIPELINE_STAGES = (
    ("1. Initial agent state", "nothing (a seed)",
     "build the Q-network with random weights, an empty replay buffer, epsilon = 1",
     "agent parameters initialised"),
    ("2. Training iteration", "agent + environment",
     "act, store transitions, learn from replayed batches for 1000 steps",
     "updated parameters and training state"),
    ("3. Checkpoint save", "the complete training state",
     "write every component to a temporary directory, hash, fsync, rename",
     "a verified checkpoint directory"),
    ("4. Training resume", "the checkpoint",
     "verify hashes, load every component into a fresh agent, continue",
     "the same run, continuing as if never stopped"),
)


def parameter_table(module: nn.Module) -> list[dict[str, Any]]:
    """Per-tensor statistics of a network's parameters. Introduced in ``01_pipeline_trace``."""
    rows = []
    for name, p in module.named_parameters():
        x = p.detach().double()
        rows.append({"tensor": name, "shape": "x".join(map(str, p.shape)), "numbers": p.numel(),
                     "mean": x.mean().item(), "std": x.std().item() if p.numel() > 1 else 0.0,
                     "min": x.min().item(), "max": x.max().item()})
    return rows


def parameter_changes(before: Mapping[str, torch.Tensor],
                      after: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """How much each tensor moved between two state dicts. Introduced in
    ``01_pipeline_trace``."""
    rows = []
    for name, old in before.items():
        new = after[name]
        delta = (new.double() - old.double())
        norm = old.double().norm().item()
        rows.append({"tensor": name, "changed values": int((delta != 0).sum()),
                     "of": delta.numel(), "size of change (L2)": delta.norm().item(),
                     "relative change": delta.norm().item() / norm if norm else float("inf")})
    return rows


def checkpoint_file_table(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The files of a checkpoint with their sizes and hashes (as recorded and as on disk).
    Introduced in ``01_pipeline_trace``."""
    path = Path(checkpoint)
    manifest = read_manifest(path)
    rows = [{"file": MANIFEST, "bytes": (path / MANIFEST).stat().st_size,
             "sha256 (first 16 hex digits)": manifest["manifest_sha256"][:16] + " (self)"}]
    for name, entry in manifest["files"].items():
        rows.append({"file": name, "bytes": (path / name).stat().st_size,
                     "sha256 (first 16 hex digits)": describe_digest(entry)})
    return rows


def component_size_table(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """How many bytes each component takes in a checkpoint. Introduced in
    ``01_pipeline_trace``."""
    manifest = read_manifest(Path(checkpoint))
    rows = [{"component": name, "tensors": c["tensors"], "tensor bytes": c["tensor_bytes"],
             "JSON bytes": c["json_bytes"]} for name, c in manifest["components"].items()]
    return sorted(rows, key=lambda r: -(r["tensor bytes"] + r["JSON bytes"]))


def draw_pipeline(ax: Any, highlight: int | None = None) -> None:
    """The four-stage data-flow diagram. Introduced in ``01_pipeline_trace``.

    Its text scales with the lab style's font size (larger in the presentation style); the
    stages are told apart by their titles, the highlighted one by a thick frame, not by colour.
    """
    import matplotlib
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax.set_xlim(0, 4)
    ax.set_ylim(0, 1.4)
    ax.axis("off")
    ax.grid(False)
    scale = float(matplotlib.rcParams["font.size"]) / 10
    if scale > 1:   # larger text (presentation style): a taller figure keeps the boxes legible
        width, height = ax.figure.get_size_inches()
        ax.figure.set_size_inches(width, height * scale)
    wrap = max(14, int(24 / scale))
    colors = ["#E3F0FA", "#E0F3EE", "#FDF3D9", "#F8E8F1"]   # Okabe-Ito tints, text on top
    for i, (title, _, what, output) in enumerate(PIPELINE_STAGES):
        x = i + 0.06
        on = highlight == i
        # With a stage highlighted, the others fade so the eye lands on it.
        faded = highlight is not None and not on
        edge = "#111827" if on else "#6b7280"
        ax.add_patch(FancyBboxPatch((x, 0.28), 0.82, 0.72, boxstyle="round,pad=0.02",
                                    facecolor=colors[i], edgecolor=edge,
                                    alpha=0.35 if faded else 1.0, linewidth=3 if on else 1))
        ink = "#9ca3af" if faded else "#111827"
        ax.text(x + 0.41, 0.97, _wrap(title, int(24 / scale)), ha="center", va="top",
                fontsize=10 * scale, fontweight="bold", color=ink)
        ax.text(x + 0.41, 0.79 if scale > 1 else 0.72, _wrap(what, wrap), ha="center", va="top",
                fontsize=8.5 * scale, color=ink)
        ax.text(x + 0.41, 0.13, "→ " + _wrap(output, wrap), ha="center", va="center",
                fontsize=8.5 * scale, style="italic",
                color="#9ca3af" if faded else "#374151")
        if i < 3:
            ax.add_patch(FancyArrowPatch((x + 0.84, 0.64), (x + 1.05, 0.64), arrowstyle="-|>",
                                         mutation_scale=16, color="#374151", zorder=5,
                                         shrinkA=0, shrinkB=0))
    # The resume arc starts at "Training resume" and points back to "Training iteration":
    # after a resume, training continues from the checkpoint, not from the start.
    ax.annotate("", xy=(1.47, 1.03), xytext=(3.47, 1.03),
                arrowprops=dict(arrowstyle="-|>", color=ROLE["event"], linewidth=1.5,
                                linestyle="--", mutation_scale=16,
                                connectionstyle="arc3,rad=0.15"))
    ax.text(2.47, 1.3, "interrupted? resume loads the last checkpoint and training continues",
            ha="center", fontsize=9.5 * scale, color=ROLE["event"])


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# --------------------------------------------------------------------------------------------
# Lesson 2: one prediction
# --------------------------------------------------------------------------------------------

CARTPOLE_FEATURES = ("cart position (m)", "cart velocity (m/s)", "pole angle (rad)",
                     "pole angular velocity (rad/s)")
CARTPOLE_ACTIONS = ("push left", "push right")


def plot_activations(trace: Sequence[tuple[str, torch.Tensor]], axes: Sequence[Any],
                     action_names: Sequence[str] | None = None) -> None:
    """One bar chart per layer of a forward pass (from ``QNetwork.forward_trace``).

    With ``action_names``, the last layer (the Q-values) is drawn as the labelled Q-value
    panel: one named bar per action with its value, the greedy action marked.
    Introduced in ``02_prediction_trace``."""
    if action_names is not None:
        pairs = list(zip(axes, trace))
        for ax, (name, values) in pairs[:-1]:
            plot_activations([(name, values)], [ax])
        ax, (_, values) = pairs[-1]
        plot_q_values(ax, values.detach().cpu().reshape(-1).numpy(), action_names)
        return
    for ax, (name, values) in zip(axes, trace):
        v = values.detach().cpu().reshape(-1).numpy()
        # the sign is also the bar's direction, so colour is not its only cue
        colors = np.where(v > 0, ROLE["positive"], np.where(v < 0, ROLE["negative"], "#9ca3af"))
        if v.size > 20:  # one line collection instead of a patch per unit: 10x faster to draw
            ax.vlines(np.arange(v.size), 0, v, colors=colors, linewidth=max(1.0, 160 / v.size))
            ax.set_xlim(-1, v.size)
        else:
            ax.bar(np.arange(v.size), v, color=colors, width=0.7)
        active = f", {int((v > 0).sum())}/{v.size} active" if "ReLU" in name else ""
        ax.set_title(f"{name} ({v.size} values{active})", fontsize="medium")
        ax.axhline(0, color="black", linewidth=0.5)


def plot_q_values(ax: Any, q_values: Sequence[float],
                  action_names: Sequence[str] = CARTPOLE_ACTIONS) -> None:
    """The Q-value panel: one labelled bar per action with its value written beside it, the
    greedy action (the largest Q-value) labelled "(greedy)", in blue and hatched. Introduced
    in ``02_prediction_trace``."""
    q = np.asarray(q_values, dtype=float).reshape(-1)
    if len(action_names) != q.size:
        raise ValueError(f"{q.size} Q-values but {len(action_names)} action names")
    greedy = int(np.argmax(q))
    bars = ax.barh(range(q.size), q, color=[ROLE["resumed"] if i == greedy else "#BDBDBD"
                                            for i in range(q.size)], edgecolor="black",
                   linewidth=0.5)
    bars[greedy].set_hatch("//")
    ax.set_yticks(range(q.size), [f"{name}\n(greedy)" if i == greedy else name
                                  for i, name in enumerate(action_names)])
    ax.invert_yaxis()
    ax.grid(False)
    for i, v in enumerate(q):
        ax.text(v, i, f" {v:.4g} ", va="center", ha="left" if v >= 0 else "right")
    lo, hi = min(0.0, float(q.min())), max(0.0, float(q.max()))
    pad = 0.4 * ((hi - lo) or 1.0)
    ax.set_xlim(lo - (pad if lo < 0 else 0.0), hi + pad)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("Q-value = estimated discounted return after the action")
    ax.set_title(f"Q-values ({q.size} actions): greedy = {action_names[greedy]}",
                 fontsize="medium")


def discounted_return(rewards: int | Sequence[float], gamma: float) -> float:
    """The discounted return of a reward sequence: sum of ``gamma**k * reward_k``. An integer
    stands for that many rewards of 1 (CartPole: one per step the pole stays up), so
    ``discounted_return(n, g) == (1 - g**n) / (1 - g)``, never more than ``1 / (1 - g)``.
    Introduced in ``02_prediction_trace``."""
    if not 0.0 < gamma <= 1.0:
        raise CkptlabError(f"gamma must be in (0, 1], not {gamma}")
    values = [1.0] * int(rewards) if isinstance(rewards, int) else [float(r) for r in rewards]
    return float(sum(r * gamma ** k for k, r in enumerate(values)))


# --------------------------------------------------------------------------------------------
# Lesson 3: the epoch-by-epoch trace
# --------------------------------------------------------------------------------------------

def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average; the first points average what exists so far.
    Introduced in ``03_loss_curves``."""
    x = np.asarray(values, dtype=float)
    if window < 1:
        raise ValueError("window must be >= 1")
    csum = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def epoch_trace_rows(history: MetricHistory, saved_steps: Sequence[int] = (),
                     resumed_at_step: int | None = None) -> list[dict[str, Any]]:
    """The epoch table - epoch, mean loss, greedy return, observation - written from the data.

    Observations only state what the numbers show (a change against the previous epoch, a
    best so far, a checkpoint, the resume); they never guess a cause the data cannot show.
    Introduced in ``03_loss_curves``."""
    rows, previous, start, best = [], None, 0, None
    saved = set(saved_steps)
    for e in history.epochs:
        notes = []
        if resumed_at_step is not None and resumed_at_step == start:
            notes.append(f"resumed here from the checkpoint at step {resumed_at_step}")
        if e.mean_loss is None:
            notes.append("no updates yet (still collecting experience)")
        elif previous is not None and previous.mean_loss:
            change = e.mean_loss / previous.mean_loss - 1
            notes.append(f"loss {'up' if change > 0 else 'down'} {abs(change):.0%}")
        if e.eval_mean_return is not None:
            if previous is not None and previous.eval_mean_return is not None:
                delta = e.eval_mean_return - previous.eval_mean_return
                notes.append(f"return {'up' if delta > 0 else 'down'} {abs(delta):.3g}"
                             if delta else "return unchanged")
            if best is not None and e.eval_mean_return > best:
                notes.append("best return so far")
            best = e.eval_mean_return if best is None else max(best, e.eval_mean_return)
        if e.eval_success_rate == 1.0:
            notes.append("every greedy episode reached the time limit")
        if e.end_step in saved:
            notes.append(f"checkpoint saved at step {e.end_step}")
        start = e.end_step
        rows.append({"epoch": e.epoch, "mean TD loss": e.mean_loss,
                     "greedy return": e.eval_mean_return,
                     "observation": "; ".join(notes) or "-"})
        previous = e
    return rows


def loss_and_return_rose_together(history: MetricHistory) -> list[int]:
    """The epochs whose mean loss *and* greedy return both rose against the previous epoch:
    the data showing that a rising DQN loss does not mean a worse agent. Introduced in
    ``03_loss_curves``."""
    together = []
    for before, now in zip(history.epochs, history.epochs[1:]):
        values = (before.mean_loss, now.mean_loss, before.eval_mean_return, now.eval_mean_return)
        if None not in values and now.mean_loss > before.mean_loss and \
                now.eval_mean_return > before.eval_mean_return:
            together.append(now.epoch)
    return together


def metrics_from_checkpoint(checkpoint: str | os.PathLike[str]) -> MetricHistory:
    """The metric history stored in a checkpoint. Introduced in ``04_interrupt_and_resume``."""
    from ..engine import load_checkpoint_state

    _, states = load_checkpoint_state(Path(checkpoint), keys=["metrics"])
    history = MetricHistory()
    history.load_state_dict(states["metrics"])
    return history


def plot_training_curves(history: MetricHistory, axes: Sequence[Any], *,
                         saved_steps: Sequence[int] = (), resumed_at_step: int | None = None,
                         window: int = 50, label: str = "", color: str | None = None) -> None:
    """Loss (per update) and return (per episode, plus greedy evaluations) with checkpoint
    and resume markers. Every series differs by line style or marker as well as colour (raw
    loss thin, its moving average thick; training returns as dots, evaluations as circles on a
    line; checkpoints dotted, the resume dashed). Introduced in ``03_loss_curves``."""
    loss_ax, return_ax = axes
    steps, losses = history.loss_steps, history.losses
    if len(losses):
        loss_ax.plot(steps, losses, color=color or OKABE_ITO["sky_blue"], linewidth=0.4,
                     alpha=0.6, label=f"{label} loss per update".strip())
        loss_ax.plot(steps, smooth(losses, window), color=color or OKABE_ITO["blue"],
                     linewidth=2, label=f"{label} moving average ({window})".strip())
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("Huber TD loss")
    ends, returns = history.episode_end_steps, history.episode_returns
    return_ax.plot(ends, returns, ".", color=color or OKABE_ITO["reddish_purple"],
                   markersize=3, label=f"{label} episode return (training)".strip())
    evals = history.evaluations
    if evals:
        return_ax.plot([e["step"] for e in evals], [e["mean_return"] for e in evals], "o-",
                       color=color or OKABE_ITO["green"],
                       label=f"{label} greedy evaluation".strip())
    return_ax.set_ylabel("return")
    for ax in axes:
        for s in saved_steps:
            ax.axvline(s, color=ROLE["checkpoint"], linestyle=":", linewidth=1.2)
        if resumed_at_step is not None:
            ax.axvline(resumed_at_step, color=ROLE["event"], linestyle="--", linewidth=1.8)
        ax.set_xlabel("environment step")
    return_ax.plot([], [], ":", color=ROLE["checkpoint"], label="checkpoint saved")
    if resumed_at_step is not None:
        return_ax.plot([], [], "--", color=ROLE["event"], label="resumed here")


def show_table(rows: Sequence[Mapping[str, Any]], floatfmt: str = ".4g") -> Any:
    """Render rows as an HTML table (plain text in a terminal). Used by every lesson.

    Cells and headers are text, escaped: a value such as ``abandoned/<time>-after-step_2``
    shows as written instead of being read as markup.
    """
    import html as _html

    from IPython.display import HTML

    if not rows:
        return HTML("<i>(no rows)</i>")
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if np.isnan(v) else format(v, floatfmt)
        return "-" if v is None else _html.escape(str(v))

    head = "".join(f"<th style='text-align:left'>{_html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{cell(r[c])}</td>"
                                    for c in cols) + "</tr>" for r in rows)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def key_insight(text: str) -> Any:
    """The "key insight" box at the end of each lesson."""
    import html as _html

    from IPython.display import HTML

    return HTML("<div style='border:2px solid #2563eb;border-radius:8px;padding:10px 14px;"
                "background:#eff6ff'><b>🔑 Key insight</b><br>" + _html.escape(text) + "</div>")
