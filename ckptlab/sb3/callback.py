"""Exact resume for Stable-Baselines3: a callback that checkpoints, and a resume function.

::

    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from ckptlab.sb3 import CkptlabCallback

    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=4, seed=0), seed=0)
    model.learn(200_000, callback=CkptlabCallback("runs/ppo"))
    # Killed, preempted, SIGTERMed? Run the very same script again: the callback finds the
    # newest valid checkpoint in runs/ppo before the first step and restores everything into
    # the freshly built model, so learn() goes on as if it had never been interrupted.

The callback asks ckptlab's save policies about every environment step and writes the
checkpoint at the next rollout boundary (after the update, before the next rollout's first
step; see :mod:`ckptlab.sb3._state` for why). It asks at that boundary, about each step since
the last one, in one loop (a step itself only records three references: the callback's share
of a PPO run stays well under 1%, see ``benchmarks/README.md``); time-based policies
therefore see the boundary's clock. SIGTERM or Ctrl-C saves at the next boundary and stops
``learn()``. Retention, pointers, verification and fallback are the
:class:`~ckptlab.engine.CheckpointManager`'s.

:func:`resume` does the restore outside ``learn``: it builds the model with your function and
loads the newest valid checkpoint into it (to evaluate it, or to continue with
``model.learn(total - model.num_timesteps, reset_num_timesteps=False, callback=...)``).

Introduced in notebook ``11_bring_your_own_library``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from ..engine import (
    CHECKPOINTS_SUBDIR,
    FINAL,
    START,
    AnyOf,
    BestBy,
    CheckpointInfo,
    CheckpointManager,
    CkptlabError,
    EveryNSteps,
    Final,
    IncompatibleCheckpointError,
    RetentionPolicy,
    SaveContext,
    SavePolicy,
    load_latest_valid,
    read_manifest,
    wall_clock,
)
from ..engine.faults import ENV_VAR as FAULT_VARIABLE
from ..engine.faults import fault_point
from . import _envs
from ._state import apply_state, check_supported, run_components, settings_of

#: Events a save policy sees (besides START and FINAL): an episode ended at this step.
EPISODE_END = "episode_end"
#: The default cadence: a checkpoint at the first rollout boundary after every N timesteps.
DEFAULT_SAVE_EVERY_STEPS = 10_000
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NO_EVENTS: frozenset[str] = frozenset()
_EPISODE_EVENTS = frozenset((EPISODE_END,))


def checkpoint_directory(run_dir: str | os.PathLike[str]) -> Path:
    """Where a run's checkpoints live: ``run_dir/checkpoints`` (as for ckptlab's DQN run)."""
    return Path(run_dir) / CHECKPOINTS_SUBDIR


def _step_policies(policy: Any) -> list[EveryNSteps]:
    if isinstance(policy, EveryNSteps):
        return [policy]
    if isinstance(policy, AnyOf):
        return [p for child in policy.policies for p in _step_policies(child)]
    return []


def _episode_metrics(model: BaseAlgorithm) -> dict[str, float]:
    """What SB3 logs as ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean``."""
    infos = model.ep_info_buffer
    if not infos:
        return {}
    return {"ep_rew_mean": float(np.mean([info["r"] for info in infos])),
            "ep_len_mean": float(np.mean([info["l"] for info in infos]))}


class _WindowMetrics(Mapping[str, float]):
    """``ep_rew_mean`` and ``ep_len_mean`` over SB3's episode window as it was at one step -
    the window at the last boundary plus the first ``count`` episodes finished since -
    computed on first access (most save policies never read them)."""

    def __init__(self, window: Sequence[Mapping[str, Any]],
                 finished: Sequence[Mapping[str, Any]], count: int, size: int) -> None:
        self._window, self._finished, self._count, self._size = window, finished, count, size
        self._values: dict[str, float] | None = None

    def _computed(self) -> dict[str, float]:
        if self._values is None:
            window = [*self._window, *self._finished[:self._count]][-self._size:]
            self._values = {} if not window else {
                "ep_rew_mean": float(np.mean([i["r"] for i in window])),
                "ep_len_mean": float(np.mean([i["l"] for i in window]))}
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._computed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._computed())

    def __len__(self) -> int:
        return len(self._computed())


def _stable_baselines3_version() -> str:
    import stable_baselines3

    return stable_baselines3.__version__


def _finished_episodes(model: BaseAlgorithm) -> int:
    """Episodes finished so far, from the run's monitors (restored with the environments)."""
    layers = _envs.vec_chain(model.env)
    for layer in layers:
        if type(layer).__name__ == "VecMonitor":
            return int(layer.episode_count)
    base = layers[-1]
    return sum(len(getattr(env, "episode_returns", ())) for env in getattr(base, "envs", ()))


class CkptlabCallback(BaseCallback):
    """Checkpoint a Stable-Baselines3 run with ckptlab so that a resume is exact.

    Args:
        run_dir: the run's directory; checkpoints go to ``run_dir/checkpoints``.
        save_every_steps: a checkpoint at the first rollout boundary after every this many
            timesteps (a multiple of the number of environments; ``None``: only
            ``save_policy`` decides). Ignored when ``save_policy`` is given.
        save_policy: any of ckptlab's save policies (``EveryNSteps``, ``EveryTSeconds``,
            ``OnImprovement("ep_rew_mean")``, ``EveryNCounts(n, "episode", "episode_end")``,
            ``AnyOf(...)``), asked about every environment step (at the next rollout
            boundary, where the checkpoint is written). The final timestep is always
            saved; so is the boundary after SIGTERM or Ctrl-C.
        keep_last, retention, best, disk_budget_bytes: what to keep (see
            :class:`~ckptlab.engine.CheckpointManager`); ``best`` follows ``ep_rew_mean``.
        resume: ``"auto"`` restores the newest valid checkpoint into a model that has not
            trained yet; ``"never"`` refuses to start over a directory holding checkpoints.
        allow_config_change: resume even if the model is built with other settings (another
            learning rate, seed, ``total_timesteps``, ...) than the interrupted run; refused
            otherwise, with the list of differences.
        handle_signals: on SIGTERM or SIGINT, save at the next rollout boundary and stop
            ``learn()`` (a second signal acts as if the callback were not there).
        stateless_wrappers: wrapper classes (gymnasium or VecEnv) that hold no state, besides
            the ones ckptlab knows.
        async_save: write checkpoints in a background thread.
        verbose: 1 prints one line when resuming and when a signal stops the run.

    After a SIGTERM stop, the model in memory is one step past the checkpoint (SB3 stops a
    rollout only after a step); the process is meant to exit. Each ``learn()`` call takes the
    directory's writer lock and releases it when it ends (:meth:`close` releases it if
    ``learn()`` raised).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *,
                 save_every_steps: int | None = DEFAULT_SAVE_EVERY_STEPS,
                 save_policy: SavePolicy | None = None, keep_last: int | None = None,
                 retention: Sequence[RetentionPolicy] = (),
                 best: BestBy | None = BestBy("ep_rew_mean", "max"),
                 disk_budget_bytes: int | None = None,
                 resume: Literal["auto", "never"] = "auto", allow_config_change: bool = False,
                 handle_signals: bool = True, stateless_wrappers: Sequence[type] = (),
                 async_save: bool = False, verbose: int = 1,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(verbose=verbose)
        if resume not in ("auto", "never"):
            raise CkptlabError(f"resume must be 'auto' or 'never' (got {resume!r})")
        if save_policy is None:
            policies: list[SavePolicy] = [Final()]
            if save_every_steps is not None:
                policies.insert(0, EveryNSteps(save_every_steps))
            save_policy = AnyOf(*policies)
        self.run_dir = Path(run_dir)
        self.save_policy = save_policy
        self.resume_mode = resume
        self.allow_config_change = allow_config_change
        self.handle_signals = handle_signals
        self.stateless_wrappers = _envs.stateless_classes(stateless_wrappers)
        self.async_save = async_save
        self._manager_args: dict[str, Any] = dict(
            keep_last=keep_last, retention=retention, best=best,
            disk_budget_bytes=disk_budget_bytes)
        self._log = log if log is not None else (lambda line: print(line, flush=True))
        self.checkpoints: CheckpointManager | None = None
        self.restored_from: CheckpointInfo | None = None
        self.last_checkpoint: CheckpointInfo | None = None
        self.save_seconds = 0.0   # wall time spent in saves during learn()
        self.saves = 0
        self._pending: list[str] = []        # reasons collected since the last boundary
        self._pending_ctx: SaveContext | None = None
        self._saved_step: int | None = None  # the step the newest checkpoint holds
        self._fresh = False                  # no checkpoint and no training before this learn
        self._in_rollout = False
        self._stop_signal: int | None = None
        self._stop_now = False
        self._previous_handlers: dict[int, Any] = {}
        self._episodes = 0
        self._counters: dict[str, int] = {"episode": 0}  # what save policies see
        # (timestep, dones, infos) of every step since the last boundary, and SB3's episode
        # window at that boundary: what the save policy is asked about there
        self._recent: list[tuple[int, Any, Any]] = []
        self._window: list[Mapping[str, Any]] = []
        self._faults = False
        self._metrics: Mapping[str, float] = {}
        self._resume_record: dict[str, Any] | None = None

    # -- learn() starts: restore, or start fresh ----------------------------------------------
    def _on_training_start(self) -> None:
        model = self.model
        check_supported(model, self.stateless_wrappers)
        n_envs = model.env.num_envs
        for policy in _step_policies(self.save_policy):
            if policy.n % n_envs:
                raise CkptlabError(
                    f"EveryNSteps({policy.n}) would fire only every {np.lcm(policy.n, n_envs)} "
                    f"timesteps: with {n_envs} environments num_timesteps grows by {n_envs}. "
                    f"Use a multiple of {n_envs}")
        self.checkpoints = CheckpointManager(checkpoint_directory(self.run_dir),
                                             **self._manager_args)
        try:
            self.checkpoints.extra_versions.update(
                stable_baselines3=_stable_baselines3_version(),
                gymnasium=__import__("gymnasium").__version__)
            for name, component in run_components(model).items():
                self.checkpoints.register(name, component)
            self._start(model)
        except BaseException:
            self.close()
            raise
        self._episodes = _finished_episodes(model)
        self._counters = {"episode": self._episodes}
        self._recent, self._window = [], list(model.ep_info_buffer or ())
        self._metrics = _episode_metrics(model)
        self._faults = bool(os.environ.get(FAULT_VARIABLE))
        self.num_timesteps = model.num_timesteps
        self._install_signal_handlers()

    def _start(self, model: BaseAlgorithm) -> None:
        assert self.checkpoints is not None
        committed = self.checkpoints.committed()
        restored = getattr(model, "_ckptlab_restored_from", None)
        model._ckptlab_restored_from = None
        self._fresh = not committed and model.num_timesteps == 0
        if not committed:
            return
        if model.num_timesteps == 0:  # a model built afresh (or reset by learn): restore
            if self.resume_mode == "never":
                raise CkptlabError(
                    f"{self.checkpoints.directory} already holds checkpoints; use "
                    "resume='auto' to continue that run, or another run_dir (nothing was "
                    "changed)")
            total = model._total_timesteps
            info, states = load_latest_valid(self.checkpoints.directory)
            self._check_total(info, total, resumed_by="CkptlabCallback")
            apply_state(model, states, str(info.path),
                        allow_config_change=self.allow_config_change)
            model._ckptlab_restored_from = None
            model._total_timesteps = total
            self._restored(info, total)
            return
        newest = max(int(p.name.rsplit("_", 1)[1]) for p in committed)
        if model.num_timesteps < newest:
            raise CkptlabError(
                f"the model is at timestep {model.num_timesteps}, behind the newest checkpoint "
                f"in {self.checkpoints.directory} (timestep {newest}); build a fresh model "
                "(the callback restores it) or use ckptlab.sb3.resume (nothing was changed)")
        info = self.checkpoints.latest_valid()
        if restored is not None:  # ckptlab.sb3.resume() loaded it: is learn() asked the same?
            self._check_total(info, model._total_timesteps, resumed_by="resume()")
            self._restored(info, model._total_timesteps)
        else:  # the same model learning on in memory
            self._saved_step = info.step
            self.save_policy.load_state_dict(info.manifest.get("save_policy_state") or {})

    def _check_total(self, info: CheckpointInfo, total: int, resumed_by: str) -> None:
        saved = (info.manifest.get("config") or {}).get("total_timesteps")
        if saved is None or saved == total or self.allow_config_change:
            return
        step = info.step
        hint = (f"model.learn({saved - step}, reset_num_timesteps=False) continues it"
                if resumed_by == "resume()" else
                f"call model.learn({saved}, ...) as the interrupted run did")
        raise IncompatibleCheckpointError(
            f"the run in {self.run_dir} was started with learn(total_timesteps={saved}), this "
            f"call trains to {total}: the schedules (learning rate, clip range, exploration) "
            f"follow the total, so it would not continue that run. It is at timestep {step}: "
            f"{hint}; or pass allow_config_change=True (nothing was changed)")

    def _restored(self, info: CheckpointInfo, total: int) -> None:
        self.restored_from = info
        self._saved_step = info.step
        self.save_policy.load_state_dict(info.manifest.get("save_policy_state") or {})
        self._resume_record = {"checkpoint": str(info.path), "step": info.step}
        if self.verbose >= 1:
            self._log(f"Resuming from {info.path} (timestep {info.step} of {total}).")

    # -- every step: remember it; the policy is asked at the next boundary ----------------
    def _on_step(self) -> bool:
        # Called after every environment step, between torch's work, where even a numpy call
        # costs tens of microseconds: only a reference to the step's counters, done flags and
        # infos is kept here. The save policy is asked about each of these steps at the next
        # rollout boundary - the only place a checkpoint can be written - in one warm loop.
        if self._stop_now:
            return False
        locals_ = self.locals
        self._recent.append((self.model.num_timesteps, locals_.get("dones"),
                             locals_.get("infos")))
        if self._faults:  # CKPTLAB_FAULT was set when learn() started (tests, lessons)
            fault_point("step", self.model.num_timesteps)
        return True

    def _ask_about_recent_steps(self) -> None:
        """Ask the save policy about every step since the last boundary, as it was at that
        step (its timestep, the episodes finished so far, SB3's episode window then); the
        clock is the boundary's. Reasons are collected for the save at this boundary."""
        recent, self._recent = self._recent, []
        now = wall_clock()
        finished: list[Mapping[str, Any]] = []  # episodes ended since the last boundary
        for step, dones, infos in recent:
            if dones is not None and dones.any():
                self._episodes += int(np.count_nonzero(dones))
                self._counters = {"episode": self._episodes}
                finished += [info["episode"] for info in infos or () if "episode" in info]
                self._metrics = _WindowMetrics(self._window, finished, len(finished),
                                               self.model._stats_window_size)
                ctx = SaveContext(step, now, self._metrics, True, _EPISODE_EVENTS,
                                  self._counters)
            else:
                ctx = SaveContext(step, now, self._metrics, False, _NO_EVENTS, self._counters)
            reasons = self.save_policy.reasons(ctx)
            if reasons:
                self._pending += [r for r in reasons if r not in self._pending]
                self._pending_ctx = ctx
        self._window = list(self.model.ep_info_buffer or ())

    # -- rollout boundaries: where a checkpoint is written ------------------------------------
    def _on_rollout_start(self) -> None:
        self._in_rollout = True
        self._ask_about_recent_steps()
        step = self.model.num_timesteps
        reasons, ctx = list(self._pending), self._pending_ctx
        if self._fresh:  # the very first boundary of a new run
            self._fresh = False
            ctx = self._context(START)
            reasons += [r for r in self.save_policy.reasons(ctx) if r not in reasons]
        if self._stop_signal is not None:
            reasons.append(f"received {signal.Signals(self._stop_signal).name}")
        if reasons and step != self._saved_step:
            self._save(reasons, ctx or self._context())
        self._pending, self._pending_ctx = [], None
        if self._stop_signal is not None:
            self._stop_now = True  # SB3 stops after the next step's callback returns False
            if self.verbose >= 1:
                name = signal.Signals(self._stop_signal).name
                self._log(f"Received {name}: saved the checkpoint at timestep {step}. "
                          "Run the same script to resume.")

    def _on_rollout_end(self) -> None:
        self._in_rollout = False

    def _on_training_end(self) -> None:
        try:
            model = self.model
            finished = not self._in_rollout and not self._stop_now \
                and model.num_timesteps >= model._total_timesteps
            if finished and model.num_timesteps != self._saved_step:
                self._ask_about_recent_steps()
                ctx = self._context(FINAL)
                reasons = [*self._pending, *(r for r in self.save_policy.reasons(ctx)
                                             if r not in self._pending)] or ["final"]
                self._save(reasons, ctx, blocking=True)
            if self.checkpoints is not None:
                self.last_checkpoint = self.checkpoints.wait() or self.last_checkpoint
        finally:
            self.close()

    def _context(self, *events: str) -> SaveContext:
        return SaveContext(step=self.model.num_timesteps, now=wall_clock(),
                           metrics=self._metrics, new_metrics=False, events=frozenset(events),
                           counters={"episode": self._episodes})

    # -- saving ---------------------------------------------------------------------------------
    def _save(self, reasons: Sequence[str], ctx: SaveContext, blocking: bool = False) -> None:
        assert self.checkpoints is not None
        model = self.model
        t0 = time.perf_counter()
        self.save_policy.saved(ctx)
        kwargs: dict[str, Any] = dict(
            metrics={**_episode_metrics(model), "episodes": float(self._episodes)},
            config={"algorithm": type(model).__name__,
                    "total_timesteps": int(model._total_timesteps),
                    "n_envs": int(model.env.num_envs), "settings": settings_of(model)},
            extra={"num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
                   "episodes": self._episodes, "save_reasons": list(reasons),
                   "at": "rollout boundary", "resumed_from": self._resume_record,
                   "save_policy_state": self.save_policy.state_dict()})
        if self.async_save and not blocking:
            self.checkpoints.save_async(model.num_timesteps, **kwargs)
        else:
            self.last_checkpoint = self.checkpoints.save(model.num_timesteps, **kwargs)
        self._saved_step = model.num_timesteps
        self.saves += 1
        self.save_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Finish an async save, release the run directory's lock, restore signal handlers."""
        self._restore_signal_handlers()
        if self.checkpoints is not None:
            try:
                self.checkpoints.close()
            finally:
                self.checkpoints = None

    # -- signals ---------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        self._stop_signal, self._stop_now = None, False

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:  # asked twice: act as if we were not here
                self._restore_signal_handlers()
                os.kill(os.getpid(), signum)
                return
            self._stop_signal = signum

        self._previous_handlers = {sig: signal.signal(sig, request_stop)
                                   for sig in _STOP_SIGNALS}

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}


def resume(run_dir: str | os.PathLike[str], build: Callable[[], BaseAlgorithm], *,
           checkpoint: str | os.PathLike[str] | None = None,
           allow_config_change: bool = False,
           stateless_wrappers: Sequence[type] = ()) -> BaseAlgorithm:
    """Build the model with ``build()`` and load the run's newest valid checkpoint into it.

    ``build`` must create the model and its environment as the interrupted run did (the same
    code: algorithm, hyperparameters, seed, ``make_vec_env``/``VecNormalize``); anything that
    would change the run is refused with the list of differences. The checkpoint is verified
    (every hash) first; a damaged newest one is skipped for the next valid one, with a warning.
    With no checkpoint yet, the freshly built model is returned (one script serves both).

    Continue training with ``model.learn(total - model.num_timesteps,
    reset_num_timesteps=False, callback=CkptlabCallback(run_dir))``, where ``total`` is the
    interrupted run's ``total_timesteps`` - or simply ``model.learn(total,
    callback=CkptlabCallback(run_dir))``, which restores the same state again after SB3's reset.
    """
    model = build()
    if not isinstance(model, BaseAlgorithm):
        raise CkptlabError(f"build() must return a Stable-Baselines3 model, not "
                           f"{type(model).__name__}")
    check_supported(model, _envs.stateless_classes(stateless_wrappers))
    directory = checkpoint_directory(run_dir)
    if checkpoint is None:
        if not directory.is_dir() or not any(directory.glob("step_*")):
            return model
        info, states = load_latest_valid(directory)
    else:  # a checkpoint, or another run's directory (a foreign file is refused by name)
        info, states = load_latest_valid(checkpoint)
    apply_state(model, states, str(info.path), allow_config_change=allow_config_change)
    return model


def checkpoint_summary(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """What an SB3 checkpoint's manifest says: algorithm, timestep, total, reasons."""
    manifest = read_manifest(Path(checkpoint))
    config = manifest.get("config") or {}
    return {"algorithm": config.get("algorithm"), "num_timesteps": manifest["step"],
            "total_timesteps": config.get("total_timesteps"),
            "save_reasons": manifest.get("save_reasons"),
            "metrics": manifest.get("metrics", {})}


__all__ = ["CkptlabCallback", "resume", "checkpoint_directory", "checkpoint_summary",
           "DEFAULT_SAVE_EVERY_STEPS", "EPISODE_END"]
