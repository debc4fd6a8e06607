"""Checkpointing in practice: the package's features as tables, plots and small runs.

Every function here is used by ``10_checkpointing_in_practice``: the ``latest`` and ``best``
pointers, lineage when a run continues another run's checkpoint, the time a training loop is
blocked by a synchronous vs an asynchronous save, evaluation-only and partial loading, export
read back without ckptlab, the catalog across runs, saving every N episodes vs every N steps,
ranking checkpoints by a metric in the right direction, the checkpoint manager with a plain
PyTorch loop, and how often to checkpoint at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine import (
    BEST,
    LATEST,
    BestBy,
    Catalog,
    CheckpointInfo,
    CheckpointManager,
    CheckpointRecord,
    CkptlabError,
    LoadReport,
    SaveContext,
    SavePolicy,
    Stateful,
    committed_checkpoints,
    latest_valid_checkpoint,
    load_parameters,
    read_manifest,
    read_pointer,
    verify_checkpoint,
)
from .figures import CYCLE, OKABE_ITO, ROLE, caption
from .progress import records_exercise

# --------------------------------------------------------------------------------------------
# Pointers: what `latest` and `best` hold, and why not an mtime scan
# --------------------------------------------------------------------------------------------


def pointer_rows(checkpoints_dir: str | os.PathLike[str],
                 metric: str = "eval_return") -> list[dict[str, Any]]:
    """One row per pointer file (``latest``, ``best``): its raw content and what it names."""
    directory = Path(checkpoints_dir)
    rows = []
    for pointer in (LATEST, BEST):
        file = directory / pointer
        name = read_pointer(directory, pointer)
        if name is None:
            rows.append({"pointer": pointer, "file content": "(no pointer)", "names": "-",
                         "step": None, metric: None})
            continue
        manifest = read_manifest(directory / name)
        rows.append({"pointer": pointer,
                     "file content": " ".join(file.read_text("utf-8").split()),
                     "names": name, "step": int(manifest["step"]),
                     metric: (manifest.get("metrics") or {}).get(metric)})
    return rows


def newest_by_mtime(checkpoints_dir: str | os.PathLike[str]) -> str:
    """The checkpoint a naive "newest modification time" scan would pick (do not use this).

    Shown for contrast with the ``latest`` pointer: copying, restoring from a backup or
    touching a directory changes its modification time but not which checkpoint is newest.
    """
    candidates = committed_checkpoints(checkpoints_dir)
    if not candidates:
        raise CkptlabError(f"{checkpoints_dir} contains no checkpoints")
    return max(candidates, key=lambda p: p.stat().st_mtime_ns).name


def tree_digest(directory: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, by relative path: proof nothing changed."""
    root = Path(directory)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".writer")}


def lineage_rows(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The chain of runs behind ``checkpoint``: itself, its parent, the parent's parent, ...

    Read from the manifests' ``lineage`` records, which a run started from another run's
    checkpoint writes (see :func:`ckptlab.dqn.resume.plan_resume`).
    """
    info = verify_checkpoint(checkpoint)
    rows = [{"generation": 0, "checkpoint": f"{info.path.parent.parent.name}/{info.name}",
             "step": info.step, "manifest sha256": str(info.manifest["manifest_sha256"])[:12],
             "config changes": "-"}]
    lineage = info.manifest.get("lineage")
    generation = 0
    while lineage:
        generation += 1
        parent = lineage["parent"]
        path = Path(parent["path"])
        changes = "; ".join(f"{c['field']}: {c['old']} -> {c['new']}"
                            for c in parent.get("config_changes") or []) or "none"
        rows.append({"generation": -generation,
                     "checkpoint": f"{path.parent.parent.name}/{path.name}",
                     "step": int(parent["step"]),
                     "manifest sha256": str(parent["manifest_sha256"])[:12],
                     "config changes": changes})
        lineage = lineage.get("parent_lineage")
    return rows


# --------------------------------------------------------------------------------------------
# Asynchronous saving: how long is the training loop blocked?
# --------------------------------------------------------------------------------------------

@dataclass
class BlockingTimes:
    """Seconds the calling (training) thread was blocked by each save."""

    sync: list[float] = field(default_factory=list)
    async_: list[float] = field(default_factory=list)
    async_total: list[float] = field(default_factory=list)  # snapshot + background write

    def rows(self) -> list[dict[str, Any]]:
        """Median milliseconds per kind of save, for a table."""
        def ms(values: Sequence[float]) -> float:
            return 1000 * statistics.median(values)
        return [{"save": "save() - synchronous", "loop blocked (ms, median)": ms(self.sync),
                 "whole save (ms, median)": ms(self.sync)},
                {"save": "save_async() - background thread",
                 "loop blocked (ms, median)": ms(self.async_),
                 "whole save (ms, median)": ms(self.async_total)}]


def measure_save_blocking(components: Mapping[str, Stateful],
                          directory: str | os.PathLike[str], *,
                          repeats: int = 5) -> BlockingTimes:
    """Save ``components`` ``repeats`` times each way into ``directory`` and time the caller.

    The synchronous save blocks for the whole write (encode, hash, fsync, rename); the
    asynchronous save blocks only while the state is copied, then a background thread writes.
    Each async save is waited for before the next timing, so the two never overlap.
    """
    if repeats < 1:
        raise CkptlabError(f"repeats must be at least 1 (got {repeats})")
    times = BlockingTimes()
    with CheckpointManager(directory, keep_last=2) as manager:
        for name, component in components.items():
            manager.register(name, component)
        for i in range(repeats):
            manager.save(2 * i + 1)
            times.sync.append(manager.last_blocking_seconds)
            manager.save_async(2 * i + 2)
            times.async_.append(manager.last_blocking_seconds)
            manager.wait()
            times.async_total.append(manager.last_save_timings.total)
    return times


def plot_blocking(times: BlockingTimes) -> Any:
    """Each save's blocked time, synchronous vs asynchronous (milliseconds)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    n = len(times.sync)
    x = np.arange(n)
    # Hatched vs plain as well as vermillion vs blue: the two never differ by colour alone.
    ax.bar(x - 0.2, [1000 * t for t in times.sync], 0.4, color=ROLE["bad"], hatch="//",
           edgecolor="black", linewidth=0.5, label="save(): loop waits for the whole write")
    ax.bar(x + 0.2, [1000 * t for t in times.async_], 0.4, color=ROLE["good"],
           edgecolor="black", linewidth=0.5, label="save_async(): loop waits only for the copy")
    ax.set_xticks(x, [f"save {i + 1}" for i in range(n)])
    ax.set_ylabel("training loop blocked (ms)")
    ax.set_title("Time the training loop cannot train, per save", fontsize="medium")
    ax.legend()
    fig.tight_layout()
    sync_ms = 1000 * float(np.median(times.sync))
    async_ms = 1000 * float(np.median(times.async_))
    return caption(fig, f"Time the training loop was blocked by each of {n} saves each way: "
                        f"median {sync_ms:.1f} ms for save() against {async_ms:.1f} ms for "
                        f"save_async(), {sync_ms / max(async_ms, 1e-9):.1f} times less.")


# --------------------------------------------------------------------------------------------
# Evaluation-only and partial loading
# --------------------------------------------------------------------------------------------

def _network_for(info: CheckpointInfo, hidden_sizes: Sequence[int] | None = None,
                 seed: int = 0) -> tuple[nn.Module, str]:
    from ..dqn import QNetwork, make_env

    config = info.config
    if not config:
        raise CkptlabError(f"{info.path} records no DQN config: it was not written by the "
                           "Trainer, so the network's shape is unknown")
    env = make_env(config["env_id"])
    try:
        obs_dim, n_actions = int(env.observation_space.shape[0]), int(env.action_space.n)
    finally:
        env.close()
    sizes = config["hidden_sizes"] if hidden_sizes is None else hidden_sizes
    return (QNetwork(obs_dim, n_actions, sizes, torch.Generator().manual_seed(seed)),
            config["env_id"])


def load_policy(checkpoint: str | os.PathLike[str]) -> tuple[nn.Module, str]:
    """Only the Q-network of a saved agent, for evaluation: ``(network, env_id)``.

    Nothing else is read into memory: no optimizer, no replay buffer, no RNG state. The network
    is put in ``eval()`` mode.
    """
    info = latest_valid_checkpoint(checkpoint)
    net, env_id = _network_for(info)
    report = load_parameters(info.path, net, source="agent/q_net")
    if report.skipped:
        raise CkptlabError(f"{info.path} did not fill the whole network: {report.skipped}")
    return net.eval(), env_id


@dataclass(frozen=True)
class SavedPolicy:
    """A saved agent's greedy policy, loaded for evaluation only (held in memory)."""

    name: str
    step: int
    metrics: dict[str, Any]
    network: nn.Module
    env_id: str


def load_policies(checkpoints_dir: str | os.PathLike[str]) -> dict[str, SavedPolicy]:
    """Every committed checkpoint's policy, by checkpoint name (each verified first).

    Loaded once, so a control that plays them keeps working after the files are gone.
    """
    policies = {}
    for path in committed_checkpoints(checkpoints_dir):
        info = verify_checkpoint(path)
        net, env_id = load_policy(info.path)
        policies[info.name] = SavedPolicy(info.name, info.step, info.metrics, net, env_id)
    if not policies:
        raise CkptlabError(f"{checkpoints_dir} contains no checkpoints")
    return policies


def play_policy(policy: str | os.PathLike[str] | SavedPolicy, *, episodes: int = 3,
                seed: int = 0) -> list[float]:
    """Play a saved agent's greedy policy for ``episodes`` episodes; return their returns.

    ``policy`` is a checkpoint (or run) path, or a :class:`SavedPolicy`. Episode ``i`` starts
    from ``env.reset(seed=seed + i)``, so a given checkpoint and seed always give the same
    returns.
    """
    from ..dqn import make_env

    if not 1 <= episodes <= 100:
        raise CkptlabError(f"episodes must be between 1 and 100 (got {episodes})")
    if isinstance(policy, SavedPolicy):
        net, env_id = policy.network, policy.env_id
    else:
        net, env_id = load_policy(policy)
    env = make_env(env_id)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                with torch.inference_mode():
                    action = int(net(torch.as_tensor(obs, dtype=torch.float32)).argmax())
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def policy_view(policy: SavedPolicy, episodes: int = 3) -> list[Any]:
    """The picker's answer: the checkpoint's recorded metrics and its policy, played now."""
    import matplotlib.pyplot as plt

    returns = play_policy(policy, episodes=episodes)
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.bar(range(1, len(returns) + 1), returns, color=ROLE["resumed"])
    for i, r in enumerate(returns, start=1):
        ax.text(i, r, f"{r:.0f}", ha="center", va="bottom")
    ax.set_ylim(0, 560)
    ax.axhline(500, color=ROLE["reference"], linestyle=":", linewidth=1)
    ax.set_xticks(range(1, len(returns) + 1), [f"episode {i}" for i in range(1, len(returns) + 1)])
    ax.set_ylabel("return (steps balanced)")
    ax.set_title(f"{policy.name}: greedy policy played (500 = the time limit)",
                 fontsize="medium")
    fig.tight_layout()
    saved = policy.metrics.get("eval_return")
    caption(fig, f"The greedy policy saved in {policy.name} played now for {len(returns)} "
                 f"episode(s): returns {', '.join(f'{r:.0f}' for r in returns)} (500 is the "
                 "time limit); its manifest records eval_return "
                 f"{'none' if saved is None else format(saved, '.1f')}.")
    text = (f"{policy.name}: step {policy.step}; recorded eval_return "
            f"{'-' if saved is None else format(saved, '.1f')}; played now: mean "
            f"{np.mean(returns):.1f} over {len(returns)} episode(s)")
    return [fig, text]


def warm_start(checkpoint: str | os.PathLike[str], hidden_sizes: Sequence[int], *,
               pattern: str = r"layers\.0\..*", seed: int = 1) -> tuple[nn.Module, LoadReport]:
    """A new Q-network (``hidden_sizes``) whose parameters matching ``pattern`` come from
    ``checkpoint``'s trained network; the rest keep their fresh random values."""
    info = latest_valid_checkpoint(checkpoint)
    net, _ = _network_for(info, hidden_sizes, seed)
    report = load_parameters(info.path, net, source="agent/q_net", pattern=pattern)
    return net, report


def load_report_rows(report: LoadReport) -> list[dict[str, Any]]:
    """A partial load's report as table rows: every tensor, loaded or skipped and why."""
    return ([{"tensor": name, "result": "loaded", "why": "matches the pattern"}
             for name in report.loaded]
            + [{"tensor": name, "result": "skipped", "why": why}
               for name, why in report.skipped])


# --------------------------------------------------------------------------------------------
# Export, read back without ckptlab
# --------------------------------------------------------------------------------------------

def read_export(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """What an export directory holds, read with plain ``safetensors`` and ``json`` only."""
    from safetensors import safe_open

    out = Path(out_dir)
    rows = []
    weights = out / "weights.safetensors"
    if weights.exists():
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            numbers = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
            meta = f.metadata() or {}
        rows.append({"file": weights.name, "bytes": weights.stat().st_size,
                     "read with": "safetensors.safe_open",
                     "holds": f"{len(keys)} tensors ({numbers} numbers): {', '.join(keys)}; "
                              f"from step {meta.get('source_step')}"})
    metadata = out / "metadata.json"
    if metadata.exists():
        data = json.loads(metadata.read_text("utf-8"))
        rows.append({"file": metadata.name, "bytes": metadata.stat().st_size,
                     "read with": "json.loads",
                     "holds": f"step {data.get('step')}, metrics "
                              f"{sorted((data.get('metrics') or {}))}, config "
                              f"({len(data.get('config') or {})} fields), versions, lineage"})
    return rows


# --------------------------------------------------------------------------------------------
# The catalog: checkpoints across runs
# --------------------------------------------------------------------------------------------

def evaluated_at_step(checkpoint: str | os.PathLike[str]) -> int | None:
    """The step of the evaluation whose ``eval_return`` a DQN checkpoint's manifest carries:
    the last one in its metric history (``None`` when it holds no evaluation).

    A checkpoint saved between epochs carries the evaluation of the last epoch end, not of its
    own step: a run that saves every few episodes writes several checkpoints with the same
    evaluation, and a ranking by ``eval_return`` ranks those evaluations.
    """
    from ..engine import load_checkpoint_state

    _, states = load_checkpoint_state(Path(checkpoint), keys=["metrics"])
    steps = states.get("metrics", {}).get("eval_step")
    return int(steps[-1]) if steps is not None and len(steps) else None


def catalog_rows(root: str | os.PathLike[str], *, sort: str | None = None,
                 ascending: bool = False, top: int | None = None,
                 metrics: Sequence[str] = ("eval_return", "loss")) -> list[dict[str, Any]]:
    """``ckptlab ls ROOT --sort METRIC``, as table rows (the catalog is rebuilt first), with the
    step each checkpoint's ``eval_return`` was measured at (see :func:`evaluated_at_step`)."""
    catalog = Catalog(root)
    catalog.rebuild()
    rows = []
    for row in catalog.query(sort=sort, ascending=ascending, top=top):
        entry = {"run": row.run, "checkpoint": Path(row.path).name, "step": row.step,
                 **{m: row.metrics.get(m) for m in metrics}}
        if "eval_return" in metrics:
            entry["evaluated at step"] = evaluated_at_step(Path(root) / row.path)
        entry.update({"status": row.status,
                      "started from": (f"{Path(row.parent).parent.parent.name}/"
                                       f"{Path(row.parent).name}" if row.parent else "-")})
        rows.append(entry)
    return rows


# --------------------------------------------------------------------------------------------
# Every N steps vs every N episodes
# --------------------------------------------------------------------------------------------

def replay_save_policy(policy: SavePolicy, episode_end_steps: Sequence[int],
                       total_steps: int, start_step: int = 0) -> list[int]:
    """The steps at which ``policy`` saves over a recorded run (a real policy object, asked
    after every step exactly as the Trainer asks it).

    ``start_step`` replays a run resumed at that step: episodes that ended before it still
    count (the episode counter is part of the checkpoint), but the policy is only asked after.
    """
    if not 0 <= start_step < total_steps:
        raise CkptlabError(f"start_step must be in [0, {total_steps}) (got {start_step})")
    ends = sorted(set(int(s) for s in episode_end_steps))
    saved = []
    episode = sum(1 for s in ends if s <= start_step)
    ended_at = set(ends)
    for step in range(start_step + 1, total_steps + 1):
        ended = step in ended_at
        episode += ended
        ctx = _episode_context(step, episode, ended, step == total_steps)
        if policy.reasons(ctx):
            policy.saved(ctx)
            saved.append(step)
    return saved


def _episode_context(step: int, episode: int, episode_ended: bool,
                     is_final: bool) -> SaveContext:
    """The SaveContext the Trainer builds after a step, in either form the engine has used:
    named events and counters (``events``/``counters``) or RL-specific fields."""
    fields = {f.name for f in dataclasses.fields(SaveContext)}
    if "events" in fields:
        events = {"episode_end"} if episode_ended else set()
        if is_final:
            events.add("final")
        return SaveContext(step=step, events=frozenset(events),  # type: ignore[call-arg]
                           counters={"episode": episode})
    return SaveContext(step=step, episode=episode, epoch=0,  # type: ignore[call-arg]
                       episode_ended=episode_ended, is_final=is_final)


def plot_save_schedules(schedules: Mapping[str, Sequence[int]],
                        episode_end_steps: Sequence[int], total_steps: int) -> Any:
    """One row of save marks per schedule, above the episode lengths of the recorded run."""
    import matplotlib.pyplot as plt

    fig, (ax, lengths) = plt.subplots(2, 1, figsize=(8, 3.6), sharex=True,
                                      gridspec_kw={"height_ratios": [1.2, 1]})
    for i, (label, steps) in enumerate(schedules.items()):   # each row labelled by its rule
        ax.plot(steps, [i] * len(steps), "|", markersize=14, markeredgewidth=2,
                color=CYCLE[i % len(CYCLE)])
    ax.set_yticks(range(len(schedules)),
                  [f"{label} ({len(steps)} saves)" for label, steps in schedules.items()])
    ax.set_ylim(-0.6, len(schedules) - 0.4)
    ax.grid(False, axis="y")
    ax.set_title("When each rule saves, over the same recorded run", fontsize="medium")
    ends = np.asarray(sorted(episode_end_steps))
    episode_lengths = np.diff(np.insert(ends, 0, 0))
    if ends.size:
        lengths.plot(ends, episode_lengths, ".", color=ROLE["reference"], markersize=3)
    lengths.set_ylabel("episode length")
    lengths.set_xlabel("environment step")
    lengths.set_xlim(0, total_steps)
    fig.tight_layout()
    counts = "; ".join(f"{label}: {len(steps)} saves" for label, steps in schedules.items())
    tail = (f", above the run's {ends.size} episode lengths (the first {episode_lengths[0]} "
            f"steps, the longest {episode_lengths.max()})" if ends.size else "")
    return caption(fig, f"The steps at which each save rule saves over the same recorded run of "
                        f"{total_steps} steps ({counts}){tail}.")


def mean_gap(steps: Sequence[int], lo: int, hi: int) -> float:
    """Mean distance between consecutive saves whose steps lie in ``[lo, hi]``."""
    inside = [s for s in steps if lo <= s <= hi]
    if len(inside) < 2:
        return float("inf")
    return float(np.mean(np.diff(inside)))


# --------------------------------------------------------------------------------------------
# Ranking checkpoints: which metric, which direction
# --------------------------------------------------------------------------------------------

def records_of(checkpoints_dir: str | os.PathLike[str]) -> list[CheckpointRecord]:
    """What retention and ``BestBy`` see of each committed checkpoint (opened read-only)."""
    manager = CheckpointManager(checkpoints_dir, create=False)
    return manager.records()


def pick_rows(records: Sequence[CheckpointRecord],
              rules: Sequence[BestBy]) -> list[dict[str, Any]]:
    """For each ``BestBy`` rule: the checkpoint it picks, and that checkpoint's return."""
    rows = []
    for rule in rules:
        pick = rule.pick(records)
        rows.append({"rule": f"BestBy({rule.metric!r}, {rule.mode!r})",
                     "picks": pick.name if pick else "-",
                     "its value": pick.metrics.get(rule.metric) if pick else None,
                     "its eval_return": pick.metrics.get("eval_return") if pick else None})
    return rows


def plot_metric_directions(records: Sequence[CheckpointRecord]) -> Any:
    """Training loss and greedy return of each checkpoint, with each rule's pick circled."""
    import matplotlib.pyplot as plt

    scored = [r for r in records if "loss" in r.metrics and "eval_return" in r.metrics]
    steps = [r.step for r in scored]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.8))
    picks = {}
    for ax, metric, mode, style in ((left, "loss", "min", ("s--", ROLE["bad"])),
                                    (right, "eval_return", "max", ("o-", ROLE["good"]))):
        ax.plot(steps, [r.metrics[metric] for r in scored], style[0], color=style[1])
        pick = picks[metric] = BestBy(metric, mode).pick(scored)
        if pick is not None:
            ax.plot(pick.step, pick.metrics[metric], "o", markersize=16, fillstyle="none",
                    color="black")
            ax.annotate(f"BestBy({metric!r}, {mode!r})", (pick.step, pick.metrics[metric]),
                        textcoords="offset points", xytext=(8, 8), fontsize="small")
        ax.set_xlabel("checkpoint step")
        ax.set_ylabel(metric)
    left.set_title("training loss per checkpoint (lower ≠ better agent)", fontsize="medium")
    right.set_title("greedy evaluation return per checkpoint", fontsize="medium")
    fig.tight_layout()
    said = []
    for metric, mode in (("loss", "min"), ("eval_return", "max")):
        pick = picks[metric]
        if pick is not None:
            said.append(f"BestBy({metric!r}, {mode!r}) picks step {pick.step}, whose greedy "
                        f"return is {pick.metrics['eval_return']:.0f}")
    return caption(fig, f"Training loss (left) and greedy evaluation return (right) of "
                        f"{len(scored)} checkpoints: " + "; ".join(said) + ".")


# --------------------------------------------------------------------------------------------
# CheckpointManager with the learner's own components: a plain supervised PyTorch loop
# --------------------------------------------------------------------------------------------

class BatchSampler:
    """Draws minibatch indices from its own generator; checkpointable like any component."""

    def __init__(self, n_examples: int, batch_size: int, seed: int) -> None:
        self.n_examples, self.batch_size = n_examples, batch_size
        self.rng = np.random.default_rng(seed)

    def next_batch(self) -> np.ndarray:
        return self.rng.integers(0, self.n_examples, self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        # PCG64's state holds 128-bit integers: stored as strings so any JSON reader keeps them.
        state = self.rng.bit_generator.state
        return {"bit_generator": state["bit_generator"],
                "state": str(state["state"]["state"]), "inc": str(state["state"]["inc"]),
                "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = {
            "bit_generator": state["bit_generator"],
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def regression_data(seed: int = 0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A small fixed regression task: y = sin(3 x0) + x1^2 + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + x[:, 1:] ** 2 + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def train_regression(checkpoints_dir: str | os.PathLike[str] | None, total_steps: int, *,
                     save_every: int = 50, stop_after: int | None = None,
                     seed: int = 0) -> dict[str, Any]:
    """A plain PyTorch training loop checkpointed with :class:`CheckpointManager`.

    The learner's own components (a module, its optimizer and a batch sampler) are registered
    by name; the loop restores the newest valid checkpoint if there is one, trains, and saves
    every ``save_every`` steps. ``stop_after`` ends the process early (a simulated crash after
    that step, before its save). Returns the final model weights and the last loss.
    """
    x, y = regression_data(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler = BatchSampler(len(x), 32, seed)
    manager = (CheckpointManager(checkpoints_dir, keep_last=2)
               if checkpoints_dir is not None else None)
    start, loss = 0, float("nan")
    try:
        if manager is not None:
            manager.register("model", model)
            manager.register("optimizer", optimizer)
            manager.register("sampler", sampler)
            info = manager.restore_latest()          # None on a fresh run
            start = info.step if info else 0
        for step in range(start + 1, total_steps + 1):
            batch = torch.as_tensor(sampler.next_batch())
            loss_t = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss_t.backward()
            optimizer.step()
            loss = loss_t.item()
            if stop_after is not None and step == stop_after:
                break                                 # "crash": nothing saved for this step
            if manager is not None and (step % save_every == 0 or step == total_steps):
                manager.save(step, metrics={"train_mse": loss})
    finally:
        if manager is not None:
            manager.close()
    return {"weights": {k: v.clone() for k, v in model.state_dict().items()}, "loss": loss,
            "start": start}


# --------------------------------------------------------------------------------------------
# How often to checkpoint at all
# --------------------------------------------------------------------------------------------

def expected_waste(interval_s: float, save_s: float, mtbf_s: float) -> float:
    """Fraction of wall time lost to saving plus redoing work, for a save every
    ``interval_s`` seconds costing ``save_s``, with failures every ``mtbf_s`` on average.

    First-order model (Young, 1974): saving costs ``save_s / interval_s``; a failure loses on
    average half an interval, ``interval_s / 2`` per ``mtbf_s``.
    """
    if interval_s <= 0 or save_s < 0 or mtbf_s <= 0:
        raise CkptlabError("interval and time between failures must be positive, and the save "
                           "cost non-negative")
    return save_s / interval_s + interval_s / (2 * mtbf_s)


def optimal_interval(save_s: float, mtbf_s: float) -> float:
    """The interval that minimises :func:`expected_waste`: ``sqrt(2 * save_s * mtbf_s)``."""
    if save_s <= 0 or mtbf_s <= 0:
        raise CkptlabError("save cost and time between failures must be positive")
    return math.sqrt(2 * save_s * mtbf_s)


def interval_view(save_seconds: float = 0.05, mtbf_hours: float = 10.0,
                  run_hours: float = 100.0) -> list[Any]:
    """The "how often?" control's answer: waste against interval, the best interval, and
    whether checkpointing pays at all for a run of ``run_hours``."""
    import matplotlib.pyplot as plt

    if save_seconds <= 0 or mtbf_hours <= 0 or run_hours <= 0:
        raise CkptlabError("save cost, time between failures and run length must be positive")
    mtbf = mtbf_hours * 3600
    best = optimal_interval(save_seconds, mtbf)
    intervals = np.geomspace(max(save_seconds, 0.01), 100 * mtbf, 400)
    waste = np.array([expected_waste(t, save_seconds, mtbf) for t in intervals])
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.loglog(intervals, 100 * (save_seconds / intervals), ":", color=OKABE_ITO["orange"],
              linewidth=2, label="time spent saving")
    ax.loglog(intervals, 100 * intervals / (2 * mtbf), "--", color=OKABE_ITO["vermillion"],
              label="work redone after failures")
    ax.loglog(intervals, 100 * waste, color="black", label="total")
    ax.axvline(best, color=OKABE_ITO["blue"], linestyle="-.")
    lost = 100 * expected_waste(best, save_seconds, mtbf)
    ax.annotate(f"best: every {_duration(best)}\n({lost:.2g}% lost)",
                (best, 100 * expected_waste(best, save_seconds, mtbf)),
                textcoords="offset points", xytext=(8, 12), fontsize="small",
                color=OKABE_ITO["blue"])
    ax.set_ylim(1e-3, 1e3)
    ax.set_xlabel("seconds between checkpoints")
    ax.set_ylabel("% of wall time lost")
    ax.set_title(f"save costs {save_seconds:.3g} s, a failure every {mtbf_hours:.3g} h on average",
                 fontsize="medium")
    ax.legend(loc="lower left")
    fig.tight_layout()
    caption(fig, f"Share of wall time lost against the interval between checkpoints, for saves "
                 f"costing {save_seconds:.3g} s and a failure every {mtbf_hours:.3g} h: time "
                 f"spent saving falls and work redone rises with the interval, and their total "
                 f"is smallest, {lost:.2g}%, saving every {_duration(best)}.")
    return [fig, f"Saves costing {save_seconds:.3g} s, a failure every {mtbf_hours:.3g} h, a "
                 f"{run_hours:.3g} h run. "
                 + checkpoint_advice(save_seconds, mtbf_hours, run_hours)]


def expected_completion_time(work_s: float, mtbf_s: float, *, interval_s: float | None = None,
                             save_s: float = 0.0) -> float:
    """Expected wall time to finish ``work_s`` seconds of training when failures strike at
    random (a Poisson process, one every ``mtbf_s`` on average) and each failure sends the run
    back to its last checkpoint (restarts themselves taken as instant).

    Without checkpoints (``interval_s=None``) every failure restarts the run from zero, and the
    expectation is ``M (e^(T/M) - 1)``: it grows exponentially with the run, because a long run
    rarely gets through in one piece. With a save every ``interval_s`` seconds of work (each
    save costing ``save_s``, the last one at the end, and a failure during a save losing that
    segment), the run is a chain of independent segments of ``interval_s + save_s`` seconds,
    each taking ``M (e^(segment/M) - 1)`` on average.

    Raises:
        CkptlabError: a non-positive run length, interval or time between failures, or a
            negative save cost.
    """
    if work_s <= 0 or mtbf_s <= 0 or save_s < 0 or (interval_s is not None and interval_s <= 0):
        raise CkptlabError("run length, interval and time between failures must be positive, "
                           "and the save cost non-negative")

    def segment(seconds: float) -> float:
        return mtbf_s * math.expm1(min(seconds / mtbf_s, 700.0))  # e^700: beyond any run

    if interval_s is None:
        return segment(work_s)
    full, rest = divmod(work_s, interval_s)
    return full * segment(interval_s + save_s) + (segment(rest + save_s) if rest > 0 else 0.0)


def checkpoint_advice(save_seconds: float, mtbf_hours: float, run_hours: float) -> str:
    """Often, rarely or not at all, from the numbers: the best interval (Young's rule) and the
    expected time to finish with it and without any checkpoint
    (:func:`expected_completion_time`)."""
    mtbf, run = mtbf_hours * 3600, run_hours * 3600
    best = optimal_interval(save_seconds, mtbf)
    p_fail = 1 - math.exp(-run / mtbf)  # failures as a Poisson process
    without = expected_completion_time(run, mtbf)
    finish = (f"without any checkpoint (a failure restarts from zero) {_duration(without)}")
    if best >= run:
        return (f"The best interval ({_duration(best)}) is longer than the run "
                f"({_duration(run)}): save at the end only (and maybe once in between). "
                f"Chance of a failure during the run: {100 * p_fail:.2g}%; expected time to "
                f"finish {finish}.")
    with_saves = expected_completion_time(run, mtbf, interval_s=best, save_s=save_seconds)
    return (f"Save every {_duration(best)} (about {run / best:.0f} saves in {_duration(run)}). "
            f"Chance of a failure during the run: {100 * p_fail:.0f}%; expected time to "
            f"finish: with these saves {_duration(with_saves)}, {finish}.")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 1e5 * 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 3600:.1e} h (about {seconds / (3600 * 24 * 365.25):.2g} years)"


@records_exercise("12_closing_review", "run_plan")
def check_run_plan(plan: Any, *, run_hours: float, mtbf_hours: float,
                   save_seconds: float) -> Any:
    """Exercise of ``12_closing_review``: plan a long run. ``plan`` holds ``save_every_s``
    (Young's interval), ``finish_with_h`` (the mean hours to finish saving that often) and
    ``finish_without_h`` (the mean hours to finish with no checkpoint). Each is checked
    within 2% against :func:`optimal_interval` and :func:`expected_completion_time`, and the
    usual wrong models get their own message."""
    from .exercises import ExerciseResult

    hint = ("Young's rule: sqrt(2 x save cost x time between failures). Without checkpoints "
            "a failure restarts the run from zero, and the mean time to finish grows "
            "exponentially: M (e^(T/M) - 1). With saves, each interval plus its save is such a "
            "run of its own.")
    keys = ("save_every_s", "finish_with_h", "finish_without_h")
    if plan is None:
        return ExerciseResult(None, "set `plan` to a dict with " + ", ".join(keys))
    if not isinstance(plan, Mapping) or set(plan) != set(keys):
        return ExerciseResult(False, f"`plan` must be a dict with exactly the keys "
                                     f"{', '.join(keys)}", hint)
    try:
        given = {k: float(plan[k]) for k in keys}
    except (TypeError, ValueError):
        return ExerciseResult(False, "every value of `plan` must be a number", hint)
    mtbf, run = mtbf_hours * 3600, run_hours * 3600
    every = optimal_interval(save_seconds, mtbf)
    right = {"save_every_s": every,
             "finish_with_h": expected_completion_time(run, mtbf, interval_s=every,
                                                       save_s=save_seconds) / 3600,
             "finish_without_h": expected_completion_time(run, mtbf) / 3600}

    def near(a: float, b: float) -> bool:
        return abs(a - b) <= 0.02 * abs(b)

    problems = []
    if not near(given["save_every_s"], right["save_every_s"]):
        problems.append("save_every_s: " + (
            "Young's rule has a factor 2 under the square root"
            if near(given["save_every_s"], math.sqrt(save_seconds * mtbf)) else
            "not the interval Young's rule gives"))
    if not near(given["finish_without_h"], right["finish_without_h"]):
        one_failure = run_hours + (run_hours / 2) * (1 - math.exp(-run / mtbf))
        problems.append("finish_without_h: " + (
            "that counts at most one failure, but failures keep coming and each restarts the "
            "run from zero" if given["finish_without_h"] <= 2 * one_failure else
            "not the mean time to finish a run that restarts from zero"))
    if not near(given["finish_with_h"], right["finish_with_h"]):
        problems.append("finish_with_h: " + (
            "that leaves out the saves and the work each failure loses"
            if near(given["finish_with_h"], run_hours) else
            "not the mean time to finish saving at that interval"))
    if problems:
        return ExerciseResult(False, "; ".join(problems), hint)
    return ExerciseResult(True, f"save every {right['save_every_s'] / 60:.1f} min: about "
                                f"{right['finish_with_h']:.1f} h to finish; with no checkpoint "
                                f"about {right['finish_without_h']:.0f} h")


# --------------------------------------------------------------------------------------------
# Rolling back, and branching on purpose
# --------------------------------------------------------------------------------------------

def _masked(path: str, mask_time: bool) -> str:
    import re

    return re.sub(r"\d{8}T\d{6}Z", "<time>", path) if mask_time else path


def abandoned_checkpoints(checkpoints_dir: str | os.PathLike[str], *,
                          mask_time: bool = False) -> list[str]:
    """The checkpoints a rollback moved aside, as paths relative to ``checkpoints_dir``
    (``abandoned/<time>-after-step_NNNNNNNN/step_MMMMMMMM``), oldest move first; with
    ``mask_time`` the moment of the move reads ``<time>`` (a lesson's output stays the same)."""
    root = Path(checkpoints_dir)
    return [_masked(path, mask_time) for path in sorted(
        str(p.relative_to(root)) for p in (root / "abandoned").glob("*/step_*") if p.is_dir())]


def rollback_events(checkpoints_dir: str | os.PathLike[str], *,
                    mask_time: bool = False) -> list[dict[str, Any]]:
    """The rollbacks recorded in ``decisions.jsonl``: to which checkpoint, what moved where,
    and why (``mask_time`` as in :func:`abandoned_checkpoints`)."""
    from ..engine import read_decision_log

    return [{"rolled back to": e.get("checkpoint"), "moved": ", ".join(e.get("moved", [])),
             "moved to": _masked(str(e.get("moved_to")), mask_time), "why": e.get("reason")}
            for e in read_decision_log(checkpoints_dir) if e.get("event") == "rolled_back"]


# --------------------------------------------------------------------------------------------
# The command line: what a practitioner types
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CliRun:
    """One ``ckptlab`` command run in this process, and what it printed."""

    command: str
    exit_status: int
    output: str

    def __str__(self) -> str:
        return f"$ {self.command}\n{self.output.rstrip()}\n(exit status {self.exit_status})"


def run_cli(main: Callable[[Sequence[str]], int], args: Sequence[str], *,
            hide: str | os.PathLike[str] | None = None, max_lines: int | None = None) -> CliRun:
    """Run ``python -m ckptlab ARGS`` in this process through ``main`` - the lesson passes
    :func:`ckptlab.cli.main`, the very function the command calls (the lab itself does not
    import the command line, which sits above it) - and capture what it prints to stdout and
    stderr.

    ``hide`` (a directory) is shown as ``<work>`` and timestamps as ``<time>``, so a lesson's
    output names no machine path and stays the same from run to run; ``max_lines`` keeps the
    first lines of a long output (the rest is counted, not dropped silently).
    """
    import contextlib
    import io
    import re

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = main([str(a) for a in args])
    text = out.getvalue()
    shown = ["ckptlab", *map(str, args)]
    command = " ".join(shown)
    if hide is not None:
        text = text.replace(str(hide), "<work>")
        command = command.replace(str(hide), "<work>")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?", "<time>", text)
    lines = text.rstrip().splitlines()
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return CliRun(command, int(status), "\n".join(lines))


# --------------------------------------------------------------------------------------------
# Exercise: warm-start everything but the output layer (the "head")
# --------------------------------------------------------------------------------------------

class _StateHolder:
    """A component that only holds a state (to checkpoint a bare network's weights)."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)


@records_exercise("10_checkpointing_in_practice", "body_pattern")
def check_body_pattern(pattern: Any, trained: nn.Module, n_actions: int = 3) -> Any:
    """Exercise of ``10_checkpointing_in_practice``: a regex for :func:`load_parameters` that
    copies every layer of a trained Q-network except its output layer into a new network with
    ``n_actions`` actions (a new task, a new head).

    ``trained`` is saved as an agent checkpoint in a temporary directory (so the check works
    after the lesson has removed its own files), then a fresh network is loaded from it with
    the learner's pattern. Each kind of wrong answer gets its own message.
    """
    import re
    import tempfile

    from ..dqn import QNetwork
    from ..engine import CheckpointNotFoundError, IncompatibleCheckpointError
    from .exercises import ExerciseResult

    hint = ("The Q-network's parameters are named layers.0.*, layers.2.* and layers.4.*; "
            "the output layer is the last one. A character class such as [02] matches "
            "either digit.")
    if pattern is None or pattern == "...":
        return ExerciseResult(None, "replace the None with your pattern (a string)")
    if not isinstance(pattern, str):
        return ExerciseResult(False, f"the pattern must be a string, not "
                                     f"{type(pattern).__name__}", hint)
    try:
        re.compile(pattern)
    except re.error as exc:
        return ExerciseResult(False, f"{pattern!r} is not a valid regular expression ({exc})",
                              hint)
    linears = [m for m in trained.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise CkptlabError("check_body_pattern needs a trained Q-network (at least two layers)")
    hidden = [m.out_features for m in linears[:-1]]
    net = QNetwork(linears[0].in_features, n_actions, hidden, torch.Generator().manual_seed(7))
    head = f"layers.{2 * len(hidden)}."
    with tempfile.TemporaryDirectory(prefix="ckptlab-check-") as tmp:
        with CheckpointManager(Path(tmp) / "checkpoints") as manager:
            manager.register("agent", _StateHolder({"q_net": trained.state_dict()}))
            info = manager.save(0)
        try:
            report = load_parameters(info.path, net, source="agent/q_net", pattern=pattern)
        except IncompatibleCheckpointError:
            return ExerciseResult(False, f"your pattern also matches the output layer "
                                         f"({head}*), whose shape differs in a network with "
                                         f"{n_actions} actions, so nothing was loaded", hint)
        except CheckpointNotFoundError:
            return ExerciseResult(False, f"{pattern!r} matches no parameter name as a whole "
                                         "(load_parameters uses re.fullmatch, so 'layers.0' "
                                         "does not match 'layers.0.weight'), so nothing was "
                                         "loaded", hint)
    wanted = sorted(n for n in net.state_dict() if not n.startswith(head))
    missing = sorted(set(wanted) - set(report.loaded))
    if missing:
        return ExerciseResult(False, f"these body parameters were not loaded: "
                                     f"{', '.join(missing)}", hint)
    return ExerciseResult(True, f"{pattern!r} loads {len(report.loaded)} tensors (every "
                                f"layer but the output layer {head}*); the new head keeps "
                                "its fresh random weights")
