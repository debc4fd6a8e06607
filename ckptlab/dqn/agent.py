"""The DQN agent: Q-network, target network, Adam, and the epsilon-greedy schedule.

Introduced in notebook ``01_pipeline_trace`` (initial state, one training iteration) and
``02_prediction_trace`` (one observation through the network to an action).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_internals

from ..engine import IncompatibleCheckpointError
from .config import DQNConfig


def resolve_device(name: str) -> torch.device:
    """Turn ``'auto'`` into CUDA when available, else CPU; pass other names through."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise IncompatibleCheckpointError(
            "device 'cuda' was requested but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return device


CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS's fixed workspace setting that makes its reductions deterministic (PyTorch's
reproducibility notes); read when cuBLAS starts, so it must be set before the first GPU matmul."""


def make_gpu_deterministic() -> bool:
    """If PyTorch sees a CUDA GPU: set ``CUBLAS_WORKSPACE_CONFIG`` (unless already set), switch
    on ``torch.use_deterministic_algorithms`` (warning, not failing, for an operation that has
    no deterministic implementation) and turn off cuDNN's benchmark-driven algorithm choice.

    Returns whether a GPU was found (on a CPU nothing is changed: its kernels are already
    deterministic for a fixed thread count).
    """
    if not torch.cuda.is_available():
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return True


def _global_module_hooks() -> bool:
    """Whether hooks registered for every module (``register_module_forward_hook`` and kin)
    exist; a direct call of the layers' functions would skip them."""
    return bool(_module_internals._global_forward_pre_hooks
                or _module_internals._global_forward_hooks
                or _module_internals._global_backward_hooks
                or _module_internals._global_backward_pre_hooks)


def clip_grad_norm(parameters: Sequence[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for plain tensors on one device, without its
    per-call grouping by device and dtype: the same operations in the same order, so the
    clipped gradients are bit-for-bit those of the torch function, at a third of its cost for
    a few small tensors."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    clip_coef = float(max_norm) / (total_norm + 1e-6)
    torch._foreach_mul_(grads, torch.clamp(clip_coef, max=1.0))


class QNetwork(nn.Module):
    """An MLP from an observation vector to one Q-value per action (ReLU between layers)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int],
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        sizes = [obs_dim, *hidden_sizes, n_actions]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        # Checked for hooks before every forward pass (a plain tuple: cheaper to walk than the
        # Sequential, which is a module itself).
        self._watched = (self.layers, *layers)
        # Same distribution as PyTorch's default Linear init, but drawn from our own generator
        # so creating an agent never touches (or depends on) the global torch RNG.
        with torch.no_grad():
            for layer in self.layers:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self._layers_are_hooked():  # FSDP2's per-layer unshard, a profiler's hooks, ...
            return self.layers(obs)
        # The layers' own functions, called directly: in a network this small, calling each
        # submodule costs more than its arithmetic (~8 us per call on a CPU). Same operations
        # in the same order as the module path, so the numbers are bit-for-bit the same.
        x = obs
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                x = F.linear(x, layer.weight, layer.bias)
            else:
                x = F.relu(x)
        return x

    def _layers_are_hooked(self) -> bool:
        """Whether calling a layer as a module would run hooks that the direct path skips."""
        if _global_module_hooks():
            return True
        if self._watched[0] is not self.layers:  # the layer sequence was replaced
            self._watched = (self.layers, *self.layers)
        for module in self._watched:
            if (module._forward_pre_hooks or module._forward_hooks or module._backward_hooks
                    or module._backward_pre_hooks):
                return True
        return False

    def forward_trace(self, obs: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Every layer's output for ``obs``, named — used to visualise a forward pass."""
        trace = [("input", obs)]
        x = obs
        for i, layer in enumerate(self.layers):
            x = layer(x)
            trace.append((f"{i}:{type(layer).__name__}", x))
        return trace


class LinearSchedule:
    """Epsilon that decays linearly from ``start`` to ``end`` over ``duration`` steps.

    Its position is part of the training state: it is checkpointed, so a resumed run explores
    exactly as the uninterrupted one did.
    """

    def __init__(self, start: float, end: float, duration: int) -> None:
        self.start, self.end, self.duration = float(start), float(end), int(duration)
        self.position = 0

    def value(self) -> float:
        if self.duration == 0:
            return self.end
        fraction = min(self.position / self.duration, 1.0)
        return self.start + fraction * (self.end - self.start)

    def advance(self) -> None:
        self.position += 1

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "duration": self.duration,
                "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.start, self.end = float(state["start"]), float(state["end"])
        self.duration, self.position = int(state["duration"]), int(state["position"])


def _check_shapes(module: nn.Module, state: Mapping[str, Any], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise IncompatibleCheckpointError(
            f"{what}: the checkpoint's network has different layers (missing: "
            f"{', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'}); "
            "it was trained with another architecture (hidden_sizes) or environment")
    for name, tensor in own.items():
        saved = state[name]
        if tuple(saved.shape) != tuple(tensor.shape):
            raise IncompatibleCheckpointError(
                f"{what}: tensor '{name}' has shape {tuple(saved.shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} here; the checkpoint was trained with another "
                "architecture (hidden_sizes) or environment")


class DQNAgent:
    """Deep Q-Network with a target network, Huber loss, optional Double DQN and Adam.

    Args:
        obs_dim: length of the observation vector.
        n_actions: number of discrete actions.
        config: hyperparameters (``hidden_sizes``, ``learning_rate``, ``gamma``, ...).
        device: where the networks live.
        seed: seeds the weight initialisation (through a private generator).

    Introduced in notebook ``01_pipeline_trace``.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: DQNConfig,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.obs_dim, self.n_actions, self.config = obs_dim, n_actions, config
        self.device = torch.device(device)
        init_rng = torch.Generator().manual_seed(seed)
        self.q_net = QNetwork(obs_dim, n_actions, config.hidden_sizes, init_rng).to(self.device)
        self.target_net = QNetwork(obs_dim, n_actions, config.hidden_sizes).to(self.device)
        self.target_net.load_state_dict(self.q_net.state_dict())
        self.target_net.requires_grad_(False)
        # fused: one kernel for all parameters; noticeably less per-update overhead on a CPU.
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=config.learning_rate,
                                          fused=True)
        self.updates = 0

    # -- acting -------------------------------------------------------------------------------
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values of one observation (or a batch) as a numpy array."""
        with torch.inference_mode():
            x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            return self._acting_network()(x).cpu().numpy()

    def greedy_action(self, obs: np.ndarray) -> int:
        """The action with the highest Q-value."""
        with torch.inference_mode():
            if self.device.type == "cpu" and isinstance(obs, np.ndarray) \
                    and obs.dtype == np.float32 and obs.flags.writeable:
                x = torch.from_numpy(obs).unsqueeze(0)  # the same values, without a copy
            else:
                x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
            return int(self._acting_network()(x).argmax())

    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
        """Epsilon-greedy: a random action with probability ``epsilon``, else the greedy one."""
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions))
        return self.greedy_action(obs)

    # -- learning -----------------------------------------------------------------------------
    def update(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
               next_obs: torch.Tensor, terminated: torch.Tensor) -> float:
        """One gradient step on a batch of transitions; returns the Huber TD loss."""
        q = self._trained_forward(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_target = self.target_net(next_obs)
            if self.config.double_dqn:
                best = self._acting_network()(next_obs).argmax(1, keepdim=True)
                next_q = next_target.gather(1, best).squeeze(1)
            else:
                next_q = next_target.max(1).values
            target = rewards + self.config.gamma * (1.0 - terminated) * next_q
        loss = F.smooth_l1_loss(q, target)
        for group in self.optimizer.param_groups:  # zero_grad(set_to_none=True), minus its hooks
            for parameter in group["params"]:
                parameter.grad = None
        loss.backward()
        self._clip_gradients()
        self.optimizer.step()
        self.updates += 1
        self._after_update()
        return loss.item()

    # -- hooks for data-parallel subclasses (ckptlab.dqn.distributed) --------------------------
    # The update is written once; DDP trains through a wrapper and FSDP acts with a gathered
    # full copy of its sharded network, so each overrides only what differs.
    def _trained_forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The forward pass whose gradients train the online network."""
        return self.q_net(obs)

    def _acting_network(self) -> nn.Module:
        """The full online network used to act and to pick double-DQN's next action."""
        return self.q_net

    def _clip_gradients(self) -> None:
        """Scale the online network's gradients to a total 2-norm of at most max_grad_norm."""
        clip_grad_norm(list(self.q_net.parameters()), self.config.max_grad_norm)

    def _after_update(self) -> None:
        """Called after every optimizer step."""

    def sync_target(self) -> None:
        """Copy the online network's weights into the target network."""
        self.target_net.load_state_dict(self.q_net.state_dict())

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load weights, target weights and optimizer state; shapes are checked first."""
        _check_shapes(self.q_net, state["q_net"], "Q-network")
        _check_shapes(self.target_net, state["target_net"], "target network")
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise IncompatibleCheckpointError(
                f"optimizer state does not fit this agent ({exc})") from None
        self.updates = int(state["updates"])
