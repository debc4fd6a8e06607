"""The step-based DQN training loop with complete, exact-resume checkpoints.

Reads top to bottom: :meth:`Trainer.step` is one environment step and (maybe) one update;
:meth:`Trainer.train` repeats it, closes epochs, evaluates and saves.

The checkpoint holds seven components, registered by name:

=================  ==========================================================================
``agent``          online and target weights, Adam state, update count
``replay_buffer``  stored transitions and the write position
``exploration``    the epsilon schedule's position
``progress``       step, episode and epoch counters
``env``            the environment mid-episode: physics, RNG, time-limit counter, observation,
                   running episode return
``rng``            the run's generator and the global Python / numpy / torch (/ CUDA) RNGs
``metrics``        per-update losses, per-episode returns, per-epoch summaries, evaluations
=================  ==========================================================================

Introduced in notebook ``01_pipeline_trace``; exact resume is the subject of
``04_interrupt_and_resume``.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

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
    Stateful,
    checkpoint_dir_name,
    load_checkpoint_state,
    load_latest_valid,
    restore_components,
    wall_clock,
)
from ..engine.faults import fault_point
from ..engine.location import as_location
from ..engine.policies import first_scheduled_save
from .agent import DQNAgent, LinearSchedule, make_gpu_deterministic, resolve_device
from .config import DQNConfig
from .envs import EnvRunner, Evaluation, GreedyEvaluator
from .metrics import EpochSummary, MetricHistory
from .policies import EPISODE_END, EPOCH_END
from .replay import ReplayBuffer
from .resume import ResumePlan, plan_resume, refuse_mixing_runs
from .rng import RNGStates, seed_everything


@dataclass
class TrainProgress:
    """Counters of a run: environment steps, finished episodes, finished epochs."""

    step: int = 0
    episode: int = 0
    epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "episode": self.episode, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.episode, self.epoch = (int(state[k]) for k in ("step", "episode",
                                                                       "epoch"))


class UnsavedRunWarning(UserWarning):
    """A new run whose save policy writes no checkpoint before its last step: a crash or a
    kill before then loses the whole run. Emitted when :meth:`Trainer.train` starts."""


def _suggested_interval(steps: int) -> int:
    """A round save interval (1, 2 or 5 times a power of ten) of at most a fifth of ``steps``."""
    goal, interval = max(1, steps // 5), 1
    for power in range(12):
        for factor in (1, 2, 5):
            if factor * 10**power <= goal:
                interval = factor * 10**power
    return interval


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`Trainer.train` did."""

    start_step: int
    final_step: int
    finished: bool                 # reached config.total_steps
    stopped_early: bool            # a stop condition ended training
    last_evaluation: Evaluation | None
    train_seconds: float           # wall time in the loop, including saves
    save_seconds: float            # wall time spent saving checkpoints
    saves: int
    last_checkpoint: CheckpointInfo | None
    interrupted_by: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped training


class Trainer:
    """Builds every piece of a DQN run and trains it, saving and restoring checkpoints.

    Args:
        config: hyperparameters.
        run_dir: where ``checkpoints/`` goes; ``None`` trains without saving.
        keep_last: retain only this many newest checkpoints (``None``: keep all).
        progress_bar: show a tqdm progress bar.
        log: called with one line per finished epoch (and per save); ``None`` is silent.

    Creating a Trainer seeds the global Python, numpy and torch generators with
    ``config.seed`` and sets torch's CPU thread count to ``config.num_threads``; on a GPU it
    also switches on deterministic algorithms for the process
    (:func:`.agent.make_gpu_deterministic`), without which a resumed run can differ from the
    uninterrupted one in the last bits.
    """

    def __init__(self, config: DQNConfig, run_dir: str | Path | None = None, *,
                 keep_last: int | None = None, retention: Sequence[RetentionPolicy] = (),
                 disk_budget_bytes: int | None = None,
                 best: BestBy | None = BestBy("eval_return", "max"),
                 save_policy: SavePolicy | None = None, async_save: bool = False,
                 handle_signals: bool = False, progress_bar: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":  # exact resume on a GPU needs deterministic kernels,
            make_gpu_deterministic()    # switched on before the first cuBLAS call
        torch.set_num_threads(config.num_threads)
        seed_everything(config.seed)
        # a local path, or an s3:// location (engine/location.py: never a URL taken for a path)
        self.run_dir = as_location(run_dir) if run_dir is not None else None
        self.progress_bar, self.log = progress_bar, log

        self.runner = EnvRunner(config.env_id, config.seed)
        self.agent = DQNAgent(self.runner.obs_dim, self.runner.n_actions, config, self.device,
                              seed=config.seed)
        self.buffer = ReplayBuffer(config.buffer_capacity, self.runner.obs_dim)
        self.exploration = LinearSchedule(config.epsilon_start, config.epsilon_end,
                                          config.exploration_steps)
        self.progress = TrainProgress()
        self.rng = RNGStates(config.seed)
        self.metrics = MetricHistory()
        self.evaluator = GreedyEvaluator(config.env_id, config.eval_episodes, config.seed)

        self.save_policy: SavePolicy = save_policy if save_policy is not None else AnyOf(
            EveryNSteps(config.save_every_steps), Final())
        self.async_save, self.handle_signals = async_save, handle_signals
        self.checkpoints: CheckpointManager | None = None
        if self.run_dir is not None:
            self.checkpoints = CheckpointManager(
                self.run_dir / CHECKPOINTS_SUBDIR, keep_last=keep_last, retention=retention,
                best=best, disk_budget_bytes=disk_budget_bytes)
            for name, component in self.components().items():
                self.checkpoints.register(name, component)
            import gymnasium

            self.checkpoints.extra_versions["gymnasium"] = gymnasium.__version__
        self.last_evaluation: Evaluation | None = None
        self.save_seconds = 0.0
        self.saves = 0
        # Wall time is recorded in manifests, never in the state: it differs between any two
        # runs, and the state must not. A resume reads it back from the manifest.
        self.training_seconds_before = 0.0
        self._loop_started: float | None = None
        self._restored_from: CheckpointInfo | None = None
        self._failed_restore: str | None = None  # set when a restore stopped halfway
        self._resume_record: dict[str, Any] | None = None  # this session's resume, for manifests
        self.lineage: dict[str, Any] | None = None  # the parent run, when started from another
        self._stop_signal: int | None = None
        self._policy_metrics: dict[str, float] = {}  # what save policies see; see _context

    def components(self) -> dict[str, Stateful]:
        """The named pieces of state that make up a checkpoint."""
        return {"agent": self.agent, "replay_buffer": self.buffer,
                "exploration": self.exploration, "progress": self.progress,
                "env": self.runner, "rng": self.rng, "metrics": self.metrics}

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> float | None:
        """One environment step, storing the transition and (on cadence) one update.

        Returns the update's loss, or ``None`` when no update happened this step.
        """
        cfg, rng = self.config, self.rng.generator
        obs = self.runner.current_obs()
        action = self.agent.act(obs, self.exploration.value(), rng)
        result = self.runner.step(action)
        self.buffer.add(result.obs, action, result.reward, result.next_obs, result.terminated)
        self.exploration.advance()
        self.progress.step += 1
        step = self.progress.step
        if result.episode_done:
            self.progress.episode += 1
            self.metrics.record_episode(step, self.runner.episode_return,
                                        self.runner.episode_length)
        loss = None
        if step > cfg.learning_starts and step % cfg.train_every == 0:
            loss = self.agent.update(*self.buffer.sample(cfg.batch_size, rng, self.device))
            self.metrics.record_loss(step, loss)
        if step % cfg.target_update_every == 0:
            self.agent.sync_target()
        return loss

    # -- epochs and evaluation ----------------------------------------------------------------
    def evaluate(self) -> Evaluation:
        """Greedy episodes on the evaluation envs (never affects training)."""
        return self.evaluator.evaluate(lambda batch: self.agent.q_values(batch).argmax(1),
                                       self.progress.step)

    def _end_epoch(self) -> EpochSummary:
        cfg, step = self.config, self.progress.step
        self.progress.epoch += 1
        first = step - cfg.steps_per_epoch + 1
        losses = self.metrics.losses_between(first, step)
        returns = self.metrics.returns_between(first, step)
        evaluation = None
        if self.progress.epoch % cfg.eval_every_epochs == 0:
            evaluation = self.last_evaluation = self.evaluate()
            self.metrics.record_evaluation(step, self.progress.epoch, evaluation.returns,
                                           evaluation.reached_time_limit)
        summary = EpochSummary(
            epoch=self.progress.epoch, end_step=step,
            mean_loss=float(np.mean(losses)) if losses else None,
            mean_return=float(np.mean(returns)) if returns else None,
            episodes=len(returns), epsilon=self.exploration.value(),
            eval_mean_return=evaluation.mean_return if evaluation else None,
            eval_success_rate=evaluation.success_rate if evaluation else None)
        self.metrics.record_epoch(summary)
        self._policy_metrics = self.latest_metrics()  # save policies see new values from here
        self._say(format_epoch(summary))
        return summary

    # -- the loop -----------------------------------------------------------------------------
    def train(self, until_step: int | None = None,
              stop_when: Callable[[EpochSummary], bool] | None = None) -> TrainResult:
        """Train until ``until_step`` (default ``config.total_steps``) or ``stop_when`` is true.

        Saves every ``config.save_every_steps`` steps and a final checkpoint when the run
        reaches ``total_steps`` (when a run directory was given).
        """
        cfg = self.config
        self._refuse_if_half_restored()
        if (self.checkpoints is not None and self._restored_from is None
                and self.progress.step == 0 and self.checkpoints.committed()):
            raise CkptlabError(
                f"{self.checkpoints.directory} already holds checkpoints; call restore() to "
                "continue that run, or use another run_dir (nothing was changed)")
        target = cfg.total_steps if until_step is None else min(until_step, cfg.total_steps)
        start, started = self.progress.step, time.perf_counter()
        self._warn_if_nothing_is_saved_before_the_end(start, target)
        self._loop_started = started
        saves_before, save_seconds_before = self.saves, self.save_seconds
        last_checkpoint: CheckpointInfo | None = None
        stopped, interrupted_by = False, None
        bar = tqdm(total=target, initial=start, unit="step", disable=not self.progress_bar,
                   dynamic_ncols=True, leave=False)
        previous_handlers = self._install_signal_handlers()
        try:
            if self.progress.step == 0 and self._restored_from is None:
                last_checkpoint = self._maybe_save(self._context(START)) or \
                    last_checkpoint
            while self.progress.step < target:
                episodes_before = self.progress.episode
                self.step()
                step = self.progress.step
                summary = self._end_epoch() if step % cfg.steps_per_epoch == 0 else None
                events = [EPISODE_END] if self.progress.episode != episodes_before else []
                if summary is not None:
                    events.append(EPOCH_END)
                if step == cfg.total_steps:
                    events.append(FINAL)
                ctx = self._context(*events, new_metrics=summary is not None
                                    and summary.eval_mean_return is not None)
                last_checkpoint = self._maybe_save(ctx) or last_checkpoint
                fault_point("step", step)
                if step % 100 == 0:
                    bar.update(step - bar.n)
                stop_signal = self._agreed_stop_signal()
                if stop_signal is not None:
                    interrupted_by = signal.Signals(stop_signal).name
                    last_checkpoint = self._save_before_stopping(interrupted_by,
                                                                 last_checkpoint)
                    break
                if summary is not None and stop_when is not None and stop_when(summary):
                    stopped = True
                    break
            if self.checkpoints is not None:
                last_checkpoint = self.checkpoints.wait() or last_checkpoint
        finally:
            self._restore_signal_handlers(previous_handlers)
            bar.close()
            self.training_seconds_before += time.perf_counter() - started
            self._loop_started = None
        return TrainResult(
            start_step=start, final_step=self.progress.step,
            finished=self.progress.step >= cfg.total_steps, stopped_early=stopped,
            last_evaluation=self.last_evaluation,
            train_seconds=time.perf_counter() - started,
            save_seconds=self.save_seconds - save_seconds_before,
            saves=self.saves - saves_before, last_checkpoint=last_checkpoint,
            interrupted_by=interrupted_by)

    def _warn_if_nothing_is_saved_before_the_end(self, start: int, target: int) -> None:
        """Before a new run trains to its end: if its save policy writes no checkpoint before
        the last step, say what a crash would cost and how to save along the way."""
        total = self.config.total_steps
        if (self.checkpoints is None or start != 0 or self._restored_from is not None
                or target != total or first_scheduled_save(self.save_policy, 0, total) != total):
            return
        every = _suggested_interval(total)
        warnings.warn(UnsavedRunWarning(
            f"this run saves no checkpoint before its last step ({total}): a crash or kill "
            f"before then loses all {total} steps, and the next run starts from step 0. To "
            f"save along the way, pass --save-every {every} on the command line "
            f"(save_every_steps={every} in DQNConfig)."), stacklevel=3)

    def _context(self, *events: str, new_metrics: bool = False) -> SaveContext:
        # Built every step, so it reuses the metrics computed at the last epoch end (they only
        # change there) instead of assembling a new dict each time.
        return SaveContext(step=self.progress.step, now=wall_clock(),
                           metrics=self._policy_metrics, new_metrics=new_metrics,
                           events=frozenset(events),
                           counters={"episode": self.progress.episode,
                                     "epoch": self.progress.epoch})

    def _maybe_save(self, ctx: SaveContext) -> CheckpointInfo | None:
        if self.checkpoints is None:
            return None
        reasons = self.save_policy.reasons(ctx)
        if ctx.is_final and not reasons:  # promised whatever the policy: the run's result
            reasons = ["final (always written at the last step)"]
        if not reasons:
            return None
        info = self.save(reasons=reasons, blocking=ctx.is_final or not self.async_save)
        self.save_policy.saved(ctx)
        return info

    # -- signals: finish the step, save, stop ---------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        self._stop_signal = None

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _agreed_stop_signal(self) -> int | None:
        """The signal that ends training after this step (``None``: go on). One process
        decides alone; a data-parallel trainer makes every rank agree on the same step."""
        return self._stop_signal

    def _save_before_stopping(self, signal_name: str,
                              last_checkpoint: CheckpointInfo | None) -> CheckpointInfo | None:
        """Save the step a signal stopped at, unless a save just covered it; returns the
        run's last checkpoint."""
        if self.checkpoints is not None and (last_checkpoint is None or
                                             last_checkpoint.step != self.progress.step):
            return self.save(reasons=[f"received {signal_name}"], blocking=True)
        return last_checkpoint

    @staticmethod
    def _restore_signal_handlers(previous: Mapping[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # -- checkpoints --------------------------------------------------------------------------
    def latest_metrics(self) -> dict[str, float]:
        """The numbers recorded in the next manifest: the last epoch's and evaluation's."""
        metrics: dict[str, float] = {"epsilon": self.exploration.value(),
                                     "episodes": float(self.progress.episode)}
        if self.metrics.epochs:
            last = self.metrics.epochs[-1]
            if last.mean_loss is not None:
                metrics["loss"] = last.mean_loss
            if last.mean_return is not None:
                metrics["train_return"] = last.mean_return
        if self.metrics.evaluations:
            metrics["eval_return"] = self.metrics.evaluations[-1]["mean_return"]
            metrics["eval_success_rate"] = self.metrics.evaluations[-1]["success_rate"]
        return metrics

    def save(self, reasons: Sequence[str] = ("requested",),
             blocking: bool = True) -> CheckpointInfo | None:
        """Write a checkpoint of the complete training state now.

        With ``blocking=False`` the state is snapshotted and written in the background (see
        :meth:`CheckpointManager.save_async`); ``None`` is returned and errors surface at the
        next save or at :meth:`close`.
        """
        if self.checkpoints is None:
            raise IncompatibleCheckpointError("this Trainer has no run_dir to save into")
        self._refuse_if_half_restored()
        t0 = time.perf_counter()
        extra = self._manifest_extra(reasons, self.config)
        kwargs = dict(metrics=self.latest_metrics(), config=self.config.to_dict(), extra=extra)
        name = checkpoint_dir_name(self.progress.step)
        if blocking:
            info: CheckpointInfo | None = self.checkpoints.save(self.progress.step, **kwargs)
        else:
            self.checkpoints.save_async(self.progress.step, **kwargs)
            info = None
        self.save_seconds += time.perf_counter() - t0
        self.saves += 1
        self._say(f"saved checkpoint {name} ({'; '.join(reasons)})" if blocking else
                  f"saving checkpoint {name} in the background ({'; '.join(reasons)})")
        return info

    def _refuse_mixing_runs(self, info: CheckpointInfo) -> None:
        """Another run's checkpoint may start this run only while its directory is empty
        (:func:`~ckptlab.dqn.resume.refuse_mixing_runs`, as ``--resume PATH`` requires)."""
        if self.checkpoints is not None:
            refuse_mixing_runs(info, self.checkpoints.directory, advice="Use an empty run_dir")

    def _refuse_if_half_restored(self) -> None:
        if self._failed_restore is not None:
            raise CkptlabError(
                f"{self._failed_restore}; this Trainer may hold part of that checkpoint's "
                "state, so it cannot train or save. Build a new Trainer (nothing was saved)")

    def _manifest_extra(self, reasons: Sequence[str], config: DQNConfig) -> dict[str, Any]:
        """The run's own manifest fields: counters, why it saved, time trained, where it came
        from, and the save policy's state (so a resume continues the policy too)."""
        in_loop = time.perf_counter() - self._loop_started if self._loop_started else 0.0
        return {"episode": self.progress.episode, "epoch": self.progress.epoch,
                "total_steps": config.total_steps, "save_reasons": list(reasons),
                "training_seconds": round(self.training_seconds_before + in_loop, 3),
                "resumed_from": self._resume_record, "lineage": self.lineage,
                "save_policy_state": self.save_policy.state_dict()}

    def restore(self, checkpoint: str | Path | None = None, *,
                allow_config_change: bool = False,
                allow_rollback: bool = False) -> CheckpointInfo:
        """Load the complete training state from ``checkpoint`` (default: newest valid here).

        The checkpoint's config must match this Trainer's in every ``trajectory`` field unless
        ``allow_config_change`` is set; differences in ``numerics`` fields (device, threads) are
        allowed with a warning; every difference is recorded in the next manifests. Restoring
        from another run's checkpoint starts a new lineage: this run's manifests name the
        parent checkpoint (path, step, manifest hash) and the config changes. See
        :mod:`ckptlab.dqn.resume`.

        Restoring an older checkpoint of this run's own directory while newer valid ones exist
        is a rollback: refused (:class:`~ckptlab.engine.RollbackRequiredError`) unless
        ``allow_rollback`` is set, when the newer ones are moved aside into
        ``checkpoints/abandoned/`` and the move is logged.
        """
        if checkpoint is None and self.checkpoints is None:
            raise IncompatibleCheckpointError("give a checkpoint path or a run_dir")
        info, states = self._verified_state(checkpoint)
        self._refuse_mixing_runs(info)
        plan = plan_resume(info, self.config, allow_config_change=allow_config_change,
                           run_checkpoints=self.checkpoints.directory if self.checkpoints
                           else None, allow_rollback=allow_rollback)
        if states is None:
            return self.resume_from(plan)
        self._check_plan(plan)
        return self._resume(plan, states)

    def _verified_state(self, location: str | Path | None) -> tuple[CheckpointInfo,
                                                                    dict[str, Any] | None]:
        """The newest valid checkpoint at ``location`` (``None``: this run's own) and its
        decoded state, in one pass over each file: hashed as it is read, a damaged newer
        checkpoint skipped for the next valid one. Nothing is loaded into the run yet: the
        config is checked first."""
        if location is None:
            assert self.checkpoints is not None
            return load_latest_valid(self.checkpoints.directory, device=self._placement())
        return load_latest_valid(location, device=self._placement())

    def resume_from(self, plan: ResumePlan) -> CheckpointInfo:
        """Load the state of an already checked :class:`ResumePlan` (see :meth:`restore`)."""
        self._check_plan(plan)
        _, states = load_checkpoint_state(plan.checkpoint.path, device=self._placement())
        return self._resume(plan, states)

    def _check_plan(self, plan: ResumePlan) -> None:
        if plan.config != self.config:
            raise IncompatibleCheckpointError(
                "this ResumePlan was made for another config; build the Trainer with "
                "plan.config")

    def _placement(self) -> dict[str, torch.device]:
        # The networks and Adam's moments go straight to the agent's device (on a GPU, a few
        # MB of host memory at a time); everything else (replay buffer arrays, RNG states)
        # is host state.
        return {"agent": self.device}

    def _resume(self, plan: ResumePlan, states: dict[str, Any]) -> CheckpointInfo:
        """Load ``states``, verified and decoded from ``plan.checkpoint``, into the run."""
        info = plan.checkpoint
        try:
            restore_components(self.components(), states, info.path)
        except BaseException as exc:
            # Some components may hold the checkpoint's state and others not: this Trainer
            # must not train or save any more.
            self._failed_restore = f"restoring {info.path} failed ({exc})"
            raise
        self._apply_config_changes(plan)
        if plan.rollback and self.checkpoints is not None:
            self.checkpoints.rollback(info.step, reason=f"resumed from {info.name}")
        self.save_policy.load_state_dict(info.manifest.get("save_policy_state") or {})
        self.training_seconds_before = float(info.manifest.get("training_seconds") or 0.0)
        self._restored_from = info
        self._policy_metrics = self.latest_metrics()
        self._resume_record = plan.record
        self.lineage = plan.lineage
        evaluations = self.metrics.evaluations
        if evaluations:  # so the next manifest and TrainResult report the latest score
            last = evaluations[-1]
            self.last_evaluation = Evaluation(last["step"], tuple(last["returns"]),
                                              tuple(last["reached_time_limit"]))
        return info

    def _apply_config_changes(self, plan: ResumePlan) -> None:
        """Settings a deliberate branch changed (``allow_config_change``) that the restored
        state carries its own copy of - Adam's learning rate, the epsilon schedule - take
        the new config's values; every other setting is read from the config as it is used."""
        changed = {change.name for change in plan.changes}
        cfg = self.config
        if "learning_rate" in changed:
            for group in self.agent.optimizer.param_groups:
                group["lr"] = cfg.learning_rate
        if changed & {"epsilon_start", "epsilon_end", "exploration_steps"}:
            schedule = self.exploration
            schedule.start, schedule.end = float(cfg.epsilon_start), float(cfg.epsilon_end)
            schedule.duration = int(cfg.exploration_steps)

    def close(self) -> None:
        """Finish pending saves, release the run directory's lock, close the environments."""
        try:
            if self.checkpoints is not None:
                self.checkpoints.close()
        finally:
            self.runner.close()
            self.evaluator.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


def format_epoch(s: EpochSummary) -> str:
    """One readable line per epoch, as the CLI prints it."""
    def fmt(value: float | None, spec: str) -> str:
        return "   -  " if value is None else format(value, spec)

    line = (f"epoch {s.epoch:3d} | step {s.end_step:7d} | loss {fmt(s.mean_loss, '6.3f')} | "
            f"return {fmt(s.mean_return, '6.1f')} | eps {s.epsilon:.2f}")
    if s.eval_mean_return is not None:
        line += (f" | eval {s.eval_mean_return:6.1f}"
                 f" (success {100 * (s.eval_success_rate or 0):3.0f}%)")
    return line
