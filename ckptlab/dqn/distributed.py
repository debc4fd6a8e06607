"""Data-parallel DQN on ``torch.distributed``: N ranks, one Q-network, sharded checkpoints.

Each rank has its own environment, its own shard of the replay buffer (``buffer_capacity / N``
transitions), its own exploration and RNG streams, and samples ``batch_size / N`` transitions
per update; the Q-network is wrapped in ``DistributedDataParallel``, so gradients are averaged
across ranks and every rank holds the same weights. CPU + gloo here; CUDA + NCCL when a GPU is
there. ``step`` counts iterations: one environment step on every rank.

Checkpoints go through :class:`~ckptlab.engine.distributed.ShardedCheckpointer`: the online
and target networks and Adam's state through DCP (``model``, ``target``, ``optim``); each
rank's buffer shard, environment mid-episode, RNG, schedule, counters and metrics as that
rank's own part.

Resuming at the same world size is exact (bit for bit, even after a SIGKILL mid-save and a
restart by the elastic launcher). Resuming on another number of ranks *reshards*: DCP reshards
the model and optimizer, the replay shards are merged (interleaved in time) and dealt out
again, ranks whose environment and RNG were saved continue them, and the others start fresh
episodes on fresh streams. That run is a faithful continuation but not bit-identical to any
run at either size - it says so in its log and its manifests (``resharded_from``).

Launch: ``ckptlab train --nproc N [--max-restarts R] ...`` (:func:`launch_job`, whose ranks run
``python -m ckptlab.dqn`` with the job) or ``torchrun --nproc-per-node N -m ckptlab train ...``
(each rank: :func:`train_rank`). SIGTERM or SIGINT (to the launcher, which passes it on, or to
any rank) stops every rank after the same step with one sharded save, and the job exits 0
(:class:`StopRequest`, :meth:`DistributedTrainer._maybe_save`); a killed launcher takes its
ranks with it (``die_with_launcher``); a rank that fails reports why, and the launcher prints
that one line. Evaluation runs on rank 0 alone and is broadcast.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from ..engine import (
    CHECKPOINTS_SUBDIR,
    BestBy,
    CheckpointInfo,
    CkptlabError,
    IncompatibleCheckpointError,
    SaveContext,
    SavePolicy,
    checkpoint_dir_name,
    latest_valid_checkpoint,
)
from ..engine.distributed import (
    GRACEFUL_STOP_SECONDS,
    ShardedCheckpointer,
    in_launched_worker,
    init_distributed,
    launch,
    rank_fault_point,
)
from ..engine.sharded import is_sharded, world_size_of
from .agent import DQNAgent
from .config import (
    DQNConfig,
    check_world_size,  # noqa: F401 (also imported from here)
)
from .envs import EnvRunner, Evaluation
from .job import TrainJob, job_command, prepare_resume
from .resume import ResumePlan
from .rng import RNGStates, seed_everything
from .train import Trainer, TrainResult

# DCP keys of the agent's sharded state, and the names `ckptlab export --tensors` knows them by.
DCP_ALIASES = {"agent/q_net": "model", "agent/target_net": "target", "agent/optimizer": "optim"}


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The environment seed of ``rank`` (rank 0 of a fresh run uses ``seed`` itself); ``step``
    > 0 gives a fresh stream for a rank that joins a resharded run."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, 0xD157, rank, step]).generate_state(1)[0])


class ReshardWarning(UserWarning):
    """A checkpoint from N ranks resumed on M != N ranks: a faithful continuation, not exact."""


class RankRNGStates(RNGStates):
    """The run's generators, with this rank's own stream for exploration and replay sampling."""

    def __init__(self, seed: int, rank: int, step: int = 0) -> None:
        super().__init__(seed)
        if rank or step:
            self.generator = np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([seed, 1, rank, step])))


class DataParallelAgent(DQNAgent):
    """A :class:`DQNAgent` whose gradient step is averaged across ranks by DDP.

    ``q_net`` stays the plain module (acting, evaluation and state dicts see the usual
    names); ``ddp`` wraps it for the update's forward and backward.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: DQNConfig,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__(obs_dim, n_actions, config, device, seed)
        self.ddp = DistributedDataParallel(self.q_net,
                                           device_ids=None if self.device.type == "cpu"
                                           else [self.device])
        self.sync_target()

    def _trained_forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.ddp(obs)  # DDP averages the gradients across ranks in backward()

    def sharded_state(self) -> dict[str, Any]:
        """What DCP saves and loads: online net, target net, optimizer (FQN keys)."""
        model, optim = get_state_dict(self.ddp, self.optimizer)
        return {"model": model, "target": self.target_net.state_dict(), "optim": optim}

    def load_sharded_state(self, state: Mapping[str, Any]) -> None:
        set_state_dict(self.ddp, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.target_net.load_state_dict(state["target"])


class FullyShardedAgent(DQNAgent):
    """A :class:`DQNAgent` whose online network is sharded across ranks with FSDP2.

    ``fully_shard`` splits every layer's parameters (and Adam's state) across the ranks; the
    update's forward and backward gather and reduce-scatter them. Acting happens at different
    moments on each rank, so it must not need a collective: after every update the full
    weights are gathered once (all ranks update in lockstep) into ``acting_net``, which acts,
    evaluates, picks Double-DQN actions and feeds the target network.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: DQNConfig,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from .agent import QNetwork

        super().__init__(obs_dim, n_actions, config, device, seed)
        mesh = init_device_mesh(self.device.type, (dist.get_world_size(),))
        for layer in self.q_net.layers:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.q_net, mesh=mesh)
        # Adam over the sharded (DTensor) parameters; each rank keeps its shard of the moments.
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=config.learning_rate)
        self.acting_net = QNetwork(obs_dim, n_actions, config.hidden_sizes).to(self.device)
        self.acting_net.requires_grad_(False)
        self._gather_acting_weights()
        self.sync_target()

    def _gather_acting_weights(self) -> None:
        full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                for k, v in self.q_net.state_dict().items()}
        self.acting_net.load_state_dict(full)

    def _acting_network(self) -> nn.Module:
        return self.acting_net  # a full copy: acting needs no collective

    def _clip_gradients(self) -> None:
        # The parameters are DTensors: torch's own function knows how to reduce their norms.
        nn.utils.clip_grad_norm_(self.q_net.parameters(), self.config.max_grad_norm)

    def _after_update(self) -> None:
        self._gather_acting_weights()

    def sync_target(self) -> None:
        self.target_net.load_state_dict(self.acting_net.state_dict())

    def sharded_state(self) -> dict[str, Any]:
        model, optim = get_state_dict(self.q_net, self.optimizer)
        return {"model": model, "target": self.target_net.state_dict(), "optim": optim}

    def load_sharded_state(self, state: Mapping[str, Any]) -> None:
        set_state_dict(self.q_net, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.target_net.load_state_dict(state["target"])
        self._gather_acting_weights()


class _Counters:
    """The agent's update count (its tensors live in DCP)."""

    def __init__(self, agent: DQNAgent) -> None:
        self.agent = agent

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.agent.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.agent.updates = int(state["updates"])


def reshard_replay(parts: Sequence[Mapping[str, Any]], rank: int, world_size: int,
                   capacity: int) -> dict[str, Any]:
    """Merge the replay shards of an old world and deal rank ``rank``'s share of a new one.

    The old shards are read oldest first and interleaved in time (the ranks stepped in
    lockstep); the new rank ``r`` takes every ``world_size``-th transition from ``r``, keeping
    the newest ``capacity``.
    """
    fields = ("obs", "next_obs", "actions", "rewards", "terminated")
    ordered = []
    for part in parts:
        n, pos, cap = int(part["size"]), int(part["position"]), int(part["capacity"])
        order = np.arange(n) if n < cap else np.concatenate([np.arange(pos, n),
                                                              np.arange(0, pos)])
        ordered.append({f: np.asarray(part[f])[order] for f in fields})
    longest = max(len(o["actions"]) for o in ordered)
    merged: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    for t in range(longest):
        for o in ordered:
            if t < len(o["actions"]):
                for f in fields:
                    merged[f].append(o[f][t])
    mine = {f: np.asarray(merged[f][rank::world_size])[-capacity:] for f in fields}
    n = len(mine["actions"])
    obs_dim = int(parts[0]["obs_dim"])
    if n == 0:
        mine = {"obs": np.zeros((0, obs_dim), np.float32),
                "next_obs": np.zeros((0, obs_dim), np.float32),
                "actions": np.zeros(0, np.int64), "rewards": np.zeros(0, np.float32),
                "terminated": np.zeros(0, np.float32)}
    return {"capacity": capacity, "obs_dim": obs_dim, "position": n % capacity, "size": n,
            **mine}


class DistributedTrainer(Trainer):
    """The :class:`Trainer` loop on one rank of a data-parallel job (call on every rank).

    Args:
        config: the run's (global) hyperparameters; each rank holds ``buffer_capacity / N``
            transitions and samples ``batch_size / N`` per update.
        checkpointer: where checkpoints go (``None``: no saving).
        save_policy, async_save, log, progress_bar: as for :class:`Trainer`; rank 0 decides
            when to save and tells the others, and only rank 0 logs.
        handle_signals: as for :class:`Trainer`, across ranks: SIGTERM or SIGINT to any rank
            stops every rank after the same step (within :attr:`STOP_CHECK_STEPS` steps of
            the signal), with one sharded save.
        stop_request: a :class:`StopRequest` installed before the trainer existed (as
            ``ckptlab train`` does in each rank); its signals are honoured the same way.

    Evaluation runs on rank 0 alone (every rank holds the same weights) and its result is
    sent to the others, so every rank records, and the manifest reports, that one result.
    """

    # A signal stops every rank at the next multiple of this many steps (milliseconds away).
    STOP_CHECK_STEPS = 10

    def __init__(self, config: DQNConfig, checkpointer: ShardedCheckpointer | None, *,
                 save_policy: SavePolicy | None = None, async_save: bool = False,
                 shard_model: bool = False, progress_bar: bool = False,
                 handle_signals: bool = False, stop_request: StopRequest | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        check_world_size(config, self.world_size)
        local = dataclasses.replace(config, batch_size=config.batch_size // self.world_size,
                                    buffer_capacity=config.buffer_capacity // self.world_size)
        super().__init__(local, None, best=None, save_policy=save_policy,
                         async_save=async_save, handle_signals=handle_signals,
                         progress_bar=progress_bar and self.rank == 0,
                         log=log if self.rank == 0 else None)
        self.stop_request = stop_request
        self._agreed_stop: int | None = None  # the stop signal all ranks agreed on, if any
        self.global_config = config
        seed_everything(rank_seed(config.seed, self.rank))
        self.runner.close()
        self.runner = EnvRunner(config.env_id, rank_seed(config.seed, self.rank))
        self.rng = RankRNGStates(config.seed, self.rank)
        self.parallelism = "fsdp2" if shard_model else "ddp"
        agent_class = FullyShardedAgent if shard_model else DataParallelAgent
        self.agent = agent_class(self.runner.obs_dim, self.runner.n_actions, local,
                                 self.device, seed=config.seed)
        self.checkpointer = checkpointer
        self.resharded_from: dict[str, Any] | None = None

    def rank_components(self) -> dict[str, Any]:
        """This rank's own state (saved in its part of the checkpoint)."""
        return {"replay_buffer": self.buffer, "exploration": self.exploration,
                "progress": self.progress, "env": self.runner, "rng": self.rng,
                "metrics": self.metrics, "agent_counters": _Counters(self.agent)}

    def step(self) -> float | None:
        loss = super().step()
        rank_fault_point("step", self.progress.step, self.rank)
        return loss

    def _collective_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo, CPU ones
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def evaluate(self) -> Evaluation:
        """Greedy evaluation on rank 0 alone, its result sent to every rank (collective).

        Every rank holds the same weights, so a second rank would only repeat it; sent as
        float64, the returns arrive exactly as rank 0 computed them.
        """
        n = self.config.eval_episodes
        packed = torch.zeros(2 * n, dtype=torch.float64, device=self._collective_device())
        if self.rank == 0:
            result = super().evaluate()
            packed.copy_(torch.tensor([*result.returns, *map(float, result.reached_time_limit)],
                                      dtype=torch.float64))
        dist.broadcast(packed, src=0)
        values = packed.tolist()
        return Evaluation(self.progress.step, tuple(values[:n]),
                          tuple(value != 0.0 for value in values[n:]))

    # -- stopping on a signal: every rank after the same step -------------------------------
    def _local_stop_signal(self) -> int | None:
        if self._stop_signal is not None:
            return self._stop_signal
        return self.stop_request.signum if self.stop_request is not None else None

    def _agreed_stop_signal(self) -> int | None:
        return self._agreed_stop  # every rank's all-reduce in _maybe_save set the same value

    def _save_before_stopping(self, signal_name: str,
                              last_checkpoint: CheckpointInfo | None) -> CheckpointInfo | None:
        if self.checkpointer is None:
            return last_checkpoint
        # A background save of this very step may still be writing: it is the stop's save.
        last_checkpoint = self.checkpointer.wait() or last_checkpoint
        if last_checkpoint is None or last_checkpoint.step != self.progress.step:
            last_checkpoint = self.save(reasons=[f"received {signal_name}"], blocking=True)
        return last_checkpoint

    # -- saving: rank 0 decides, every rank writes ------------------------------------------
    def _maybe_save(self, ctx: SaveContext) -> CheckpointInfo | None:
        # Rank 0 decides (ranks see different episode ends) and every rank learns it from one
        # tiny collective per step. Every STOP_CHECK_STEPS steps that collective is an
        # all-reduce that also carries any rank's stop signal, so every rank stops after the
        # same step; in between it stays a broadcast, about half the cost on gloo.
        reasons = (self.save_policy.reasons(ctx)
                   if self.rank == 0 and self.checkpointer is not None else [])
        device = self._collective_device()
        if self.progress.step % self.STOP_CHECK_STEPS == 0:
            flags = torch.tensor([1 if reasons else 0, self._local_stop_signal() or 0],
                                 dtype=torch.int64, device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            save, stop = flags.tolist()
            self._agreed_stop = stop or None
        else:
            decision = torch.tensor([1 if reasons else 0], dtype=torch.int64, device=device)
            dist.broadcast(decision, src=0)
            save = int(decision.item())
        if not save:
            return None
        info = self.save(reasons=reasons or ["rank 0 decided"],
                         blocking=ctx.is_final or not self.async_save)
        self.save_policy.saved(ctx)
        return info

    def save(self, reasons: Sequence[str] = ("requested",),
             blocking: bool = True) -> CheckpointInfo | None:
        """Write a sharded checkpoint of every rank's state now (collective)."""
        if self.checkpointer is None:
            raise IncompatibleCheckpointError("this trainer has no checkpoint directory")
        t0 = time.perf_counter()
        extra = {**self._manifest_extra(reasons, self.global_config),
                 "resharded_from": self.resharded_from,
                 "dcp_aliases": DCP_ALIASES, "parallelism": self.parallelism}
        info = self.checkpointer.save(
            self.progress.step, dcp_state=self.agent.sharded_state(),
            rank_states={n: c.state_dict() for n, c in self.rank_components().items()},
            metrics=self.latest_metrics(), config=self.global_config.to_dict(), extra=extra,
            blocking=blocking)
        self.save_seconds += time.perf_counter() - t0
        self.saves += 1
        name = checkpoint_dir_name(self.progress.step)
        self._say(f"saved sharded checkpoint {name} ({self.world_size} ranks; "
                  f"{'; '.join(reasons)})" if blocking else
                  f"saving sharded checkpoint {name} in the background")
        return info

    def train(self, until_step: int | None = None, stop_when: Any = None) -> TrainResult:
        result = super().train(until_step, stop_when)
        if self.checkpointer is not None:
            last = self.checkpointer.wait() or result.last_checkpoint
            result = dataclasses.replace(result, last_checkpoint=last)
        return result

    # -- resuming ---------------------------------------------------------------------------
    def _verified_state(self, location: str | Path | None) -> tuple[CheckpointInfo, None]:
        # A sharded checkpoint is verified here and loaded across the ranks by resume_from.
        if location is None:
            raise IncompatibleCheckpointError("give the checkpoint to restore")
        return latest_valid_checkpoint(location), None

    def resume_from(self, plan: ResumePlan) -> CheckpointInfo:
        """Load a sharded checkpoint on every rank: exact at the same world size, resharded
        (not bit-exact, and logged as such) at another."""
        info = plan.checkpoint
        if not is_sharded(info.manifest):
            raise IncompatibleCheckpointError(
                f"{info.path} was written by a single process (ckptlab train without --nproc); "
                "a distributed run resumes sharded checkpoints only. Continue it without "
                "--nproc, or start a new distributed run in another --run-dir")
        if self.checkpointer is None:
            raise IncompatibleCheckpointError("this trainer has no checkpointer to load with")
        old_world = world_size_of(info.manifest)
        state = self.agent.sharded_state()
        self.checkpointer.load_dcp(info, state)
        self.agent.load_sharded_state(state)
        if old_world == self.world_size:
            own = self.checkpointer.read_rank_part(info, self.rank)
            for name, component in self.rank_components().items():
                component.load_state_dict(own[name])
        else:
            self._reshard(info, old_world)
        self._apply_config_changes(plan)
        self.save_policy.load_state_dict(info.manifest.get("save_policy_state") or {})
        self.training_seconds_before = float(info.manifest.get("training_seconds") or 0.0)
        self._restored_from = info
        self._policy_metrics = self.latest_metrics()
        self._resume_record = plan.record
        self.lineage = plan.lineage
        return info

    def _reshard(self, info: CheckpointInfo, old_world: int) -> None:
        parts = [self.checkpointer.read_rank_part(info, r) for r in range(old_world)]
        mine = parts[self.rank] if self.rank < old_world else None
        for name in ("progress", "exploration", "agent_counters"):
            self.rank_components()[name].load_state_dict(parts[0][name])
        self.metrics.load_state_dict((mine or parts[0])["metrics"])
        step = self.progress.step
        if mine is not None:  # this rank existed: its episode and streams continue
            self.runner.load_state_dict(mine["env"])
            self.rng.load_state_dict(mine["rng"])
        else:  # a new rank: nothing saved for it, so a fresh episode on fresh streams
            self.runner.close()
            self.runner = EnvRunner(self.global_config.env_id,
                                    rank_seed(self.global_config.seed, self.rank, step))
            self.rng = RankRNGStates(self.global_config.seed, self.rank, step)
        self.buffer.load_state_dict(reshard_replay([p["replay_buffer"] for p in parts],
                                                   self.rank, self.world_size,
                                                   self.buffer.capacity))
        self.resharded_from = {"world_size": old_world, "step": step, "exact": False,
                               "checkpoint": info.name}
        dropped = list(range(self.world_size, old_world))
        if self.rank == 0:
            warnings.warn(
            f"RESHARDED: {info.name} was written by {old_world} rank(s), this run has "
            f"{self.world_size}. Model and optimizer resharded by DCP; replay shards merged and "
            f"split ({len(self.buffer)} transitions on rank 0)"
            + (f"; the episodes of rank(s) {', '.join(map(str, dropped))} end here"
               if dropped else "")
            + (f"; rank(s) {', '.join(map(str, range(old_world, self.world_size)))} start "
               "fresh episodes" if self.world_size > old_world else "")
            + ". This run is NOT bit-identical to an uninterrupted run at either size.",
            ReshardWarning, stacklevel=2)

    def close(self) -> None:
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            super().close()


# --------------------------------------------------------------------------------------------
# A job on several ranks: the launcher (`ckptlab train --nproc N`) and each rank it starts
# --------------------------------------------------------------------------------------------

def run_distributed_job(job: TrainJob) -> int:
    """Run ``job`` on several ranks: inside a launched worker (torchrun, or
    :func:`launch_job`'s ranks) train this rank, else launch the ranks. Returns the exit
    status."""
    if in_launched_worker():
        if job.nproc is not None:
            raise CkptlabError("--nproc launches workers; inside torchrun give the rank count "
                               "to torchrun (--nproc-per-node) instead")
        return train_rank(job)
    return launch_job(job)


def launch_job(job: TrainJob) -> int:
    """Launch ``job``'s ranks under torch's elastic agent (``job.nproc`` on this node) and
    wait for them; returns the exit status (0 also when a signal stopped every rank cleanly).

    Checked here, once, before any rank starts (:func:`prepare_resume`): a refused run starts
    and changes nothing. Each rank runs ``python -m ckptlab.dqn`` with :meth:`TrainJob.rank_job`
    and reports how it ended (:data:`REPORT_DIR_ENV`), so a failure is one line.

    Raises:
        CkptlabError: the resume was refused, a rank failed (its own reason), or the ranks
            could not stop cleanly after a signal.
    """
    nproc = job.nproc or 1
    prepared = prepare_resume(job, world_size=nproc * job.nnodes)
    if prepared.finished:
        print(prepared.finished_line(job.run_dir))
        return 0
    print(f"Launching {nproc} rank(s) per node on {job.nnodes} node(s) with torch's "
          f"elastic agent (max restarts {job.max_restarts}).", flush=True)
    with tempfile.TemporaryDirectory(prefix="ckptlab-rank-reports-") as reports:
        try:
            stopped_by = launch(job_command(job.rank_job(), unbuffered=True), nproc=nproc,
                                nnodes=job.nnodes, max_restarts=job.max_restarts,
                                rdzv_endpoint=job.rdzv_endpoint, rdzv_id=job.rdzv_id,
                                worker_env={REPORT_DIR_ENV: reports})
        except CkptlabError:
            errors = [r["message"] for _, r in sorted(_read_reports(reports).items())
                      if r["outcome"] == "error"]
            if errors:  # the ranks' own reason (the same on every rank for a failed save)
                raise CkptlabError(errors[0]) from None
            raise
        outcomes = _read_reports(reports)
    clean = [r for r in outcomes.values() if r["outcome"] in ("stopped", "finished")]
    if stopped_by is None or len(clean) == nproc:
        return 0  # rank 0 has said where the run stopped
    reasons = [r["message"] for _, r in sorted(outcomes.items()) if "message" in r]
    if len(outcomes) < nproc:
        reasons.append(f"{nproc - len(outcomes)} rank(s) did not stop within "
                       f"{GRACEFUL_STOP_SECONDS} s and were killed")
    raise CkptlabError(f"received {stopped_by}, but the ranks could not stop cleanly: "
                       f"{reasons[0]} - run the same command to resume from the newest "
                       "committed checkpoint")


class StopRequest:
    """SIGTERM and SIGINT recorded, not obeyed, from the moment a worker starts.

    A rank killed by the signal's default action would lose every step since the last save,
    and its peers would fail on their next collective. Recorded, the signal makes the training
    loop stop every rank after the same step with one save (:class:`DistributedTrainer`), and
    one that arrives before training began or after it ended is honoured or ignored in turn.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None

    @classmethod
    def install(cls) -> StopRequest:
        """Record the signals from now on (main thread only: Python's rule for handlers)."""
        request = cls()
        for signum in cls.SIGNALS:
            signal.signal(signum, request._record)
        return request

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum


# Where `ckptlab train --nproc` asks its ranks to report how they ended (one JSON file each).
REPORT_DIR_ENV = "CKPTLAB_RANK_REPORTS"


def _report(outcome: str, **details: Any) -> None:
    """Tell the launcher how this rank ended (only when started by ``ckptlab train --nproc``)."""
    directory = os.environ.get(REPORT_DIR_ENV)
    if directory:
        rank = int(os.environ["RANK"])
        path = Path(directory, f"rank_{rank:05d}.json")
        temp = path.with_suffix(".tmp")  # a rank killed while writing leaves no half report
        temp.write_text(json.dumps({"rank": rank, "outcome": outcome, **details}))
        os.replace(temp, path)


def _read_reports(directory: str) -> dict[int, dict[str, Any]]:
    reports = {}
    for path in sorted(Path(directory).glob("rank_*.json")):
        report = json.loads(path.read_text())
        reports[int(report["rank"])] = report
    return reports


def _restarts_left() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) < \
        int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)


def train_rank(job: TrainJob) -> int:
    """Train this rank of ``job`` (in a worker started by torchrun or :func:`launch_job`);
    returns the exit status.

    Signals are recorded from the first line on (:class:`StopRequest`). Under
    :func:`launch_job` the rank reports how it ended and a refused or failed job returns 2
    (the launcher prints the reason once); under plain torchrun the error propagates (each
    rank prints it).

    Raises:
        CkptlabError: under plain torchrun, the job was refused or failed.
    """
    stop_request = StopRequest.install()  # first of all: from here on a signal stops cleanly
    rank = int(os.environ["RANK"])
    if os.environ.get(REPORT_DIR_ENV):
        Path(os.environ[REPORT_DIR_ENV], f"rank_{rank:05d}.json").unlink(missing_ok=True)
    try:
        return _train_rank(job, stop_request)
    except CkptlabError as exc:
        _report("error", message=str(exc))
        if not os.environ.get(REPORT_DIR_ENV):
            raise  # plain torchrun: every rank says it (the CLI prints one line each)
        if _restarts_left():  # the launcher prints only the last attempt's error: say this one
            print(f"ckptlab: rank {rank} failed: {exc} (the launcher restarts the job)",
                  file=sys.stderr, flush=True)
        return 2
    except Exception as exc:
        if stop_request.signum is None:
            raise
        # Told to stop, typically because a peer died (the agent then stops the others): the
        # collectives of a clean stop cannot complete. One line instead of a traceback.
        name = signal.Signals(stop_request.signum).name
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"ckptlab: rank {rank} received {name} and stopped without a final save "
              f"({type(exc).__name__}: {first_line}); the newest committed checkpoint is "
              "intact", file=sys.stderr, flush=True)
        _report("failed", signal=name, message=first_line)
        return 128 + stop_request.signum


def _train_rank(job: TrainJob, stop_request: StopRequest) -> int:
    rank = int(os.environ["RANK"])
    use_cuda = torch.cuda.is_available() and job.device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed("nccl" if use_cuda else "gloo")
    if rank != 0:
        warnings.simplefilter("ignore")  # rank 0 reports; N copies of each warning help nobody
    checkpointer = trainer = None
    try:
        checkpointer = ShardedCheckpointer(
            job.run_dir / CHECKPOINTS_SUBDIR, retention=job.retention(),
            best=BestBy("eval_return", "max"), disk_budget_bytes=job.disk_budget,
            extra_versions=_gym_version())
        # A finished run resumes too and trains no step: a restart after the final commit
        # still says where it resumed (LaunchedRun.attempts, lesson 9).
        prepared = prepare_resume(job, world_size=dist.get_world_size(),
                                  agree=checkpointer.agree_on_checkpoint)
        info, config, plan = prepared.checkpoint, prepared.config, prepared.plan
        say = None if job.quiet else (lambda line: print(line, flush=True))
        trainer = DistributedTrainer(config, checkpointer,
                                     save_policy=job.save_policy(config),
                                     async_save=job.async_save,
                                     shard_model=job.shard_model,
                                     stop_request=stop_request, log=say)
        restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if info is not None and plan is not None:
            trainer.resume_from(plan)
            if rank == 0:
                print(f"[restart {restarts}] Resuming {trainer.world_size} rank(s) from "
                      f"{info.name} (step {info.step} of {config.total_steps}, written by "
                      f"{world_size_of(info.manifest)} rank(s)).", flush=True)
        elif rank == 0:
            print(f"[restart {restarts}] Starting a new {trainer.world_size}-rank run: "
                  f"{config.env_id}, seed {config.seed}, {config.total_steps} steps, "
                  f"{trainer.parallelism}, backend {dist.get_backend()}.", flush=True)
        result = trainer.train()
        last = result.last_checkpoint
        if result.interrupted_by:
            if rank == 0:
                print(f"Received {result.interrupted_by} at step {result.final_step}: all "
                      f"{trainer.world_size} rank(s) saved {last.path if last else 'nothing'}"
                      " and stopped. Run the same command to resume.", flush=True)
            _report("stopped", signal=result.interrupted_by, step=result.final_step,
                    checkpoint=last.name if last else None)
        else:
            if rank == 0:
                where = f"; final checkpoint {last.name}" if last else ""
                print(f"Finished at step {result.final_step} on {trainer.world_size} rank(s) "
                      f"in {result.train_seconds:.1f} s{where}.", flush=True)
            _report("finished", step=result.final_step, checkpoint=last.name if last else None)
        return 0
    finally:
        if trainer is not None:
            trainer.close()
        elif checkpointer is not None:
            checkpointer.close()
        dist.destroy_process_group()


def _gym_version() -> dict[str, str]:
    import gymnasium

    return {"gymnasium": gymnasium.__version__}


# --------------------------------------------------------------------------------------------
# Launching a run from Python (lesson 09, tests)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LaunchedRun:
    """A finished ``ckptlab train --nproc N`` process."""

    run_dir: Path
    returncode: int
    output: str

    @property
    def attempts(self) -> list[str]:
        """Rank 0's line for each attempt the elastic launcher started."""
        return [line for line in self.output.splitlines() if line.startswith("[restart")]

    @property
    def kills(self) -> list[str]:
        """The injected SIGKILLs, one line each."""
        return [line for line in self.output.splitlines() if "injected SIGKILL" in line]

    @property
    def final_checkpoint(self) -> Path:
        """The checkpoint the ``latest`` pointer names."""
        import json

        latest = self.run_dir / CHECKPOINTS_SUBDIR / "latest"
        return self.run_dir / CHECKPOINTS_SUBDIR / json.loads(latest.read_text())["checkpoint"]


def start_distributed(config: DQNConfig, run_dir: str | os.PathLike[str], *, nproc: int,
                      max_restarts: int = 0, resume: str | os.PathLike[str] | None = None,
                      kill: str | None = None) -> DistributedJob:
    """Start the job ``ckptlab train --nproc nproc`` runs, with ``config``, in a child
    process (:func:`~ckptlab.dqn.job.job_command`); returns at once.
    :meth:`DistributedJob.wait` collects it.

    Two independent jobs started one after the other share the machine: their start-up
    (mostly imports) and their training overlap instead of queueing.

    Args:
        kill: ``CKPTLAB_RANK_FAULT`` items (``"RANK:PHASE@STEP[#ATTEMPT]"``) to SIGKILL ranks.
        resume: a checkpoint or run directory to start from (default: the run's own).
    """
    import json
    import subprocess

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    job = TrainJob(run_dir, resume="auto" if resume is None else str(resume),
                   config_file=config_file, nproc=nproc, max_restarts=max_restarts,
                   quiet=True)
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_RANK_FAULT"}
    if kill:
        env["CKPTLAB_RANK_FAULT"] = kill
    env.setdefault("OMP_NUM_THREADS", "1")
    # One pipe for both streams: the job's output is read in one go by wait(), and two pipes
    # read one after the other could deadlock once the unread one filled up.
    process = subprocess.Popen(job_command(job), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return DistributedJob(run_dir, nproc, process)


@dataclasses.dataclass
class DistributedJob:
    """A ``ckptlab train --nproc N`` child process started by :func:`start_distributed`."""

    run_dir: Path
    nproc: int
    process: Any  # subprocess.Popen[str]

    def wait(self, timeout: float = 600) -> LaunchedRun:
        """Wait for the job to end and return it.

        Raises:
            CkptlabError: the job failed (the message ends with its output) or ran past
                ``timeout`` seconds (it is then stopped).
        """
        import subprocess

        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
            raise CkptlabError(f"ckptlab train --nproc {self.nproc} ran past {timeout} s and "
                               f"was stopped:\n{output[-3000:]}") from None
        run = LaunchedRun(self.run_dir, self.process.returncode, output)
        if run.returncode != 0:
            raise CkptlabError(f"ckptlab train --nproc {self.nproc} failed ({run.returncode}):"
                               f"\n{run.output[-3000:]}")
        return run


def run_distributed(config: DQNConfig, run_dir: str | os.PathLike[str], *, nproc: int,
                    max_restarts: int = 0, resume: str | os.PathLike[str] | None = None,
                    kill: str | None = None, timeout: float = 600) -> LaunchedRun:
    """Run ``ckptlab train --nproc nproc`` with ``config`` in a child process and wait
    (:func:`start_distributed`, then :meth:`DistributedJob.wait`).

    Raises:
        CkptlabError: the job failed; the message ends with its output.
    """
    return start_distributed(config, run_dir, nproc=nproc, max_restarts=max_restarts,
                             resume=resume, kill=kill).wait(timeout)


@dataclasses.dataclass(frozen=True)
class KillOutcome:
    """What killing one rank at one point of a run did, against the uninterrupted run."""

    kill: str                       # the CKPTLAB_RANK_FAULT item
    attempts: tuple[str, ...]       # rank 0's line per attempt of the elastic launcher
    resumed_from_step: int | None   # where the restarted job resumed (None: started afresh)
    identical: bool                 # final state equal to the uninterrupted run's, bit for bit
    differing: tuple[str, ...]      # the components that differ (empty when identical)

    def rows(self) -> list[dict[str, Any]]:
        """A one-row table for display."""
        return [{"killed": self.kill, "attempts": len(self.attempts),
                 "restart resumed from": "fresh start" if self.resumed_from_step is None
                 else f"step {self.resumed_from_step}",
                 "final state identical": self.identical,
                 "differing": ", ".join(self.differing) or "-"}]


def kill_outcome(run: LaunchedRun, reference: str | os.PathLike[str], kill: str) -> KillOutcome:
    """Summarise a finished killed-and-restarted run against ``reference`` (a checkpoint)."""
    import re

    from ..engine.distributed import compare_sharded_checkpoints

    resumed = None
    if len(run.attempts) > 1:
        match = re.search(r"from step_(\d+)", run.attempts[-1])
        resumed = int(match.group(1)) if match else None
    differing = tuple(c.name for c in compare_sharded_checkpoints(reference,
                                                                  run.final_checkpoint)
                      if not c.identical)
    return KillOutcome(kill, tuple(run.attempts), resumed, not differing, differing)


def kill_and_compare(config: DQNConfig, run_dir: str | os.PathLike[str],
                     reference: str | os.PathLike[str], *, rank: int, phase: str, step: int,
                     nproc: int = 2) -> KillOutcome:
    """Train ``config`` on ``nproc`` ranks, SIGKILL ``rank`` at ``phase`` of step ``step``,
    let the elastic launcher restart the job once, and compare with ``reference``."""
    if not 0 <= rank < nproc:
        raise CkptlabError(f"rank must be between 0 and {nproc - 1} (got {rank})")
    kill = f"{rank}:{phase}@{step}"
    run = run_distributed(config, run_dir, nproc=nproc, max_restarts=1, kill=kill)
    return kill_outcome(run, reference, kill)
