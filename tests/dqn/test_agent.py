"""The agent's lean hot paths compute exactly what the torch modules and utilities would."""

from __future__ import annotations

import torch
from torch import nn

from ckptlab import DQNConfig
from ckptlab.dqn.agent import DQNAgent, QNetwork, clip_grad_norm


def _network(seed: int = 0) -> QNetwork:
    return QNetwork(4, 2, (32, 16), torch.Generator().manual_seed(seed))


def test_direct_forward_is_bit_for_bit_the_module_path() -> None:
    net = _network()
    obs = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net(obs), net.layers(obs))
    with torch.inference_mode():
        assert torch.equal(net(obs[:1]), net.layers(obs[:1]))


def test_a_hooked_layer_is_called_as_a_module() -> None:
    net = _network()
    calls: list[str] = []
    net.layers[2].register_forward_hook(lambda *_: calls.append("layer"))
    net.layers.register_forward_pre_hook(lambda *_: calls.append("sequence"))
    net(torch.zeros(1, 4))
    assert calls == ["sequence", "layer"]  # the direct path would have skipped both hooks


def test_a_global_module_hook_is_honoured() -> None:
    net = _network()
    calls: list[type] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, *_: calls.append(type(module)))
    try:
        net(torch.zeros(1, 4))
    finally:
        handle.remove()
    assert nn.Linear in calls


def test_gradient_clipping_matches_torch_bit_for_bit() -> None:
    for scale, max_norm in ((100.0, 1.0), (1e-3, 10.0)):  # clipped, and left alone
        nets = [_network(), _network()]
        obs = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
        for net in nets:
            (net(obs).square().sum() * scale).backward()
        params = [list(net.parameters()) for net in nets]
        clip_grad_norm(params[0], max_norm)
        nn.utils.clip_grad_norm_(params[1], max_norm)
        for mine, theirs in zip(*params):
            assert torch.equal(mine.grad, theirs.grad)


def test_update_matches_the_textbook_update_bit_for_bit() -> None:
    """A reference update written with module calls, ``zero_grad`` and torch's clipping: the
    agent's lean update must leave the same weights, moments and losses."""
    config = DQNConfig(hidden_sizes=(32, 32))
    lean, reference = DQNAgent(4, 2, config, seed=3), DQNAgent(4, 2, config, seed=3)
    generator = torch.Generator().manual_seed(4)
    for _ in range(30):
        batch = (torch.randn(16, 4, generator=generator),
                 torch.randint(0, 2, (16,), generator=generator),
                 torch.randn(16, generator=generator), torch.randn(16, 4, generator=generator),
                 (torch.rand(16, generator=generator) < 0.2).float())
        obs, actions, rewards, next_obs, terminated = batch
        q = reference.q_net.layers(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            best = reference.q_net.layers(next_obs).argmax(1, keepdim=True)
            next_q = reference.target_net.layers(next_obs).gather(1, best).squeeze(1)
            target = rewards + config.gamma * (1.0 - terminated) * next_q
        loss = nn.functional.smooth_l1_loss(q, target)
        reference.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(reference.q_net.parameters(), config.max_grad_norm)
        reference.optimizer.step()
        assert lean.update(*batch) == loss.item()
    for mine, theirs in zip(lean.q_net.parameters(), reference.q_net.parameters()):
        assert torch.equal(mine, theirs)
    mine_state = lean.optimizer.state_dict()["state"]
    theirs_state = reference.optimizer.state_dict()["state"]
    for index, moments in theirs_state.items():
        for name, value in moments.items():
            assert torch.equal(mine_state[index][name], value)
