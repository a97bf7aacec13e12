"""VDDPolicy and its mixture: densities, config, one network call per chunk, save/load, loading dispatch."""

import json

import pytest
import torch

from mode_policy.distill import VDDPolicy, VDDPolicyConfig
from mode_policy.policies.registry import load_policy_and_run
from mode_policy.policies.vdd.mixture import MixtureParams
from tests.distill.common import TOY_TASK, toy_student


def _random_mixture(diagonal: bool, B=3, K=4, d=5) -> MixtureParams:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    std = torch.rand(B, K, d, generator=g, dtype=torch.float64) + 0.2
    lower = torch.randn(B, K, d, d, generator=g, dtype=torch.float64).tril(-1)
    scale = std if diagonal else torch.diag_embed(std) + lower
    return MixtureParams(means, scale, torch.log_softmax(torch.randn(B, K, generator=g).double(), -1))


@pytest.mark.parametrize("diagonal", [False, True])
def test_mixture_densities_match_torch_distributions(diagonal):
    params = _random_mixture(diagonal)
    L = torch.diag_embed(params.scale) if diagonal else params.scale
    reference = torch.distributions.MultivariateNormal(params.means, scale_tril=L)
    points = torch.randn(3, 7, 5, dtype=torch.float64)
    expanded = torch.distributions.MultivariateNormal(params.means[:, None], scale_tril=L[:, None])
    expected = expanded.log_prob(points[:, :, None])  # (B, M, K)
    torch.testing.assert_close(params.component_log_prob(points), expected)
    torch.testing.assert_close(params.entropy(), reference.entropy())
    resp = params.log_responsibilities(points).exp()
    torch.testing.assert_close(resp.sum(-1), torch.ones(3, 7, dtype=torch.float64))
    samples = params.rsample(20000, torch.Generator().manual_seed(1))  # (B, K, n, d)
    torch.testing.assert_close(samples.mean(2), params.means, atol=0.05, rtol=0)
    centred = samples - params.means[:, :, None]
    cov = torch.einsum("bknd,bkne->bkde", centred, centred)
    torch.testing.assert_close(cov / 20000, L @ L.transpose(-1, -2), atol=0.08, rtol=0.05)


def test_config_validates_and_round_trips(tmp_path):
    config = VDDPolicyConfig(language_encoder="onehot", tasks=["a", "b"], num_experts=3, covariance="full")
    assert config.to_dict()["policy_type"] == "vdd" and config.flat_action_dim == 40
    config.save(tmp_path / "config.json")
    assert VDDPolicyConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="covariance must be one of"):
        VDDPolicyConfig(language_encoder="onehot", tasks=["a"], covariance="spherical")
    with pytest.raises(ValueError, match="action_mode must be one of"):
        VDDPolicyConfig(language_encoder="onehot", tasks=["a"], action_mode="mode")
    with pytest.raises(ValueError, match="unknown VDDPolicyConfig key"):
        VDDPolicyConfig.from_dict({"num_expert": 3})
    (tmp_path / "mode.json").write_text(json.dumps({"state_dim": 3}))
    with pytest.raises(ValueError, match="not a VDD student"):
        VDDPolicyConfig.load(tmp_path / "mode.json")


@pytest.mark.parametrize("mode", ["mean", "greedy", "sample"])
def test_one_network_call_per_chunk(mode):
    student = toy_student(action_mode=mode, chunk_size=3, n_action_steps=2)
    calls = []
    student.network.register_forward_hook(lambda module, args, output: calls.append(1))
    obs = {"observation.state": torch.zeros(5, 1), "task": TOY_TASK}
    chunk = student.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (5, 3, 2) and len(calls) == 1
    student.reset()
    actions = [student.select_action(obs) for _ in range(4)]  # a new chunk every n_action_steps = 2 steps
    assert len(calls) == 3 and actions[0].shape == (5, 2)


def test_act_modes():
    student = toy_student(num_experts=3)
    with torch.no_grad():
        student.network.gating[-1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
        params = student.mixture(*student.encode_inputs(torch.zeros(2000, 1, 1), [TOY_TASK] * 2000))
    greedy = params.act("greedy")
    torch.testing.assert_close(greedy, params.means[:, 1])
    picks = (params.act("mean", torch.Generator().manual_seed(0))[:, None] == params.means).all(-1)
    share = picks.float().mean(0)
    expected = torch.softmax(torch.tensor([0.0, 5.0, 0.0]), 0)
    assert (share - expected).abs().max() < 0.02


def test_save_load_round_trip_and_eval_loader(tmp_path):
    torch.manual_seed(0)
    student = toy_student(action_mode="sample")
    obs = {"observation.state": torch.randn(4, 1), "task": [TOY_TASK] * 4}
    before = student.predict_action_chunk(obs, generator=torch.Generator().manual_seed(3))
    student.save_pretrained(tmp_path / "run" / "policy")
    assert json.loads((tmp_path / "run" / "policy" / "config.json").read_text())["policy_type"] == "vdd"
    loaded = VDDPolicy.from_pretrained(tmp_path / "run" / "policy")
    for key, value in student.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    after = loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(before, after)
    # `mode-policy eval` resolves a run and dispatches on config.json's policy_type.
    policy, _, run_dir = load_policy_and_run(tmp_path / "run", device="cpu")
    assert isinstance(policy, VDDPolicy) and run_dir == tmp_path / "run"
    (tmp_path / "run" / "policy" / "config.json").write_text(json.dumps({"policy_type": "flow"}))
    with pytest.raises(ValueError, match="policy_type 'flow'"):
        load_policy_and_run(tmp_path / "run", device="cpu")
