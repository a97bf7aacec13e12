"""Extension points: policy types, denoiser kinds and routing variants are registered classes.

Each registry names the known entries when asked for an unknown one; checkpoints saved before type tags
existed load unchanged; and a policy type, a denoiser kind and a routing variant defined here, in a test,
work end to end without touching library code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from mode_policy.cli import main
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.nn import DENOISERS, MoDEConfig, MoDEDenoiser
from mode_policy.nn.edm_denoiser import EDMDenoiser
from mode_policy.nn.moe.routing import ROUTING_STRATEGIES, RoutingStrategy, register_routing, routing_strategy
from mode_policy.nn.registry import load_denoiser
from mode_policy.policies import (
    POLICIES,
    ChunkingPolicy,
    MoDEPolicy,
    MoDEPolicyConfig,
    PolicyConfig,
    get_policy_class,
    load_policy,
    register_policy,
)
from mode_policy.policies.inputs import instructions
from tests.bad_inputs.fixtures import write_dataset
from tests.conftest import random_inputs, tiny_config
from tests.policies.common import make_obs, tiny_policy

SIGMAS = torch.tensor([80.0, 5.0, 0.5, 0.05, 0.0], dtype=torch.float64)


# Unknown names ------------------------------------------------------------------------------------------
def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown policy type 'act'; known: mode, (.*, )?vdd"):
        get_policy_class("act")
    with pytest.raises(ValueError, match=r"unknown denoiser kind 'lstm'; known: cnn, (.*, )?mode"):
        DENOISERS.get("lstm")
    with pytest.raises(ValueError, match=r"unknown routing 'expert_choice'; known routing variants: \["):
        routing_strategy("expert_choice")
    with pytest.raises(ValueError, match=r"router_input must be one of .*'sigma'.*'token'"):
        MoDEConfig(router_input="expert_choice")
    assert {"sigma", "token", "task", "sigma_goal", "stage", "fixed"} <= set(ROUTING_STRATEGIES)


def test_a_name_is_registered_once():
    class Impostor(ChunkingPolicy):
        config_class = MoDEPolicyConfig

    with pytest.raises(ValueError, match="policy type 'mode' is already registered, by MoDEPolicy"):
        register_policy("mode")(Impostor)


# Checkpoints without type tags ------------------------------------------------------------------------
def test_a_checkpoint_without_type_tags_loads_as_mode(tmp_path):
    policy = tiny_policy().eval()
    policy.save_pretrained(tmp_path / "p")
    values = json.loads((tmp_path / "p" / "config.json").read_text())
    assert values["policy_type"] == "mode" and values["denoiser"]["kind"] == "mode"
    del values["policy_type"], values["denoiser"]["kind"]  # as every policy saved before the tags
    (tmp_path / "p" / "config.json").write_text(json.dumps(values))
    loaded = load_policy(tmp_path / "p", device="cpu")
    assert isinstance(loaded, MoDEPolicy)
    obs = make_obs(policy.config)
    expected = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0)),
                               expected, rtol=0, atol=0)  # fmt: skip


def test_the_shipped_policy_names_its_type_and_loads():
    # Shipped again after the tags existed (10000 steps, issue #15); folders without them are covered by
    # test_a_checkpoint_without_type_tags_loads_as_mode.
    from mode_policy.policies.folders import PRETRAINED_DIR

    values = json.loads((PRETRAINED_DIR / "mt10-mode-small" / "config.json").read_text())
    assert values["policy_type"] == "mode" and values["denoiser"]["kind"] == "mode"
    assert isinstance(load_policy("mt10-mode-small", device="cpu"), MoDEPolicy)


def test_denoisers_load_by_kind(tmp_path):
    MoDEDenoiser(tiny_config()).save_pretrained(tmp_path / "d")
    values = json.loads((tmp_path / "d" / "config.json").read_text())
    del values["kind"]
    (tmp_path / "d" / "config.json").write_text(json.dumps(values))
    assert isinstance(load_denoiser(tmp_path / "d"), MoDEDenoiser)
    values["kind"] = "lstm"
    (tmp_path / "d" / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"unknown denoiser kind 'lstm'; known: cnn, (.*, )?mode"):
        load_denoiser(tmp_path / "d")


# A routing variant defined here -----------------------------------------------------------------------
@register_routing("sigma_sign")
class SigmaSignRouting(RoutingStrategy):
    """Routes on phi(sigma) with its sign flipped: a new variant is one class."""

    describe = "the negated noise level"

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        return -sigma_embedding


def test_a_routing_variant_is_one_class():
    denoiser = MoDEDenoiser(tiny_config(router_input="sigma_sign")).to(torch.float64).eval()
    assert denoiser.config.cacheable and not denoiser.config.routing_uses_goal
    _, obs, goal = random_inputs(denoiser.config, 3)
    cached = denoiser.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(0))
    routed = denoiser.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(0),
                                     use_cache=False)  # fmt: skip
    torch.testing.assert_close(cached, routed)
    sigma = MoDEDenoiser(tiny_config(router_input="sigma")).to(torch.float64).eval()
    sigma.load_state_dict(denoiser.state_dict())
    assert denoiser.cache_experts(SIGMAS).expert_ids() != sigma.cache_experts(SIGMAS).expert_ids()


# A denoiser kind defined here -------------------------------------------------------------------------
@dataclass
class MLPDenoiserConfig(MoDEConfig):
    """A MoDE config whose network is a small MLP: enough to show a kind is one registered class."""

    describe: ClassVar[str] = "MLP denoiser"
    hidden: int = 32


class MLPNetwork(nn.Module):
    def __init__(self, config: MLPDenoiserConfig) -> None:
        super().__init__()
        inputs = config.chunk_size * config.action_dim + 1 + config.num_obs_tokens * config.obs_dim
        inputs += config.num_goal_tokens * config.goal_dim
        self.net = nn.Sequential(nn.Linear(inputs, config.hidden), nn.Mish(),
                                 nn.Linear(config.hidden, config.chunk_size * config.action_dim))  # fmt: skip

    def forward(self, scaled_action, c_noise, obs, goal):
        batch = scaled_action.shape[0]
        features = [scaled_action.flatten(1), c_noise.reshape(-1, 1).expand(batch, 1), obs.flatten(1),
                    goal.flatten(1)]  # fmt: skip
        return self.net(torch.cat(features, dim=1)).view_as(scaled_action)


@DENOISERS.register("mlp")
class MLPDenoiser(EDMDenoiser):
    config_class = MLPDenoiserConfig

    def __init__(self, config: MLPDenoiserConfig) -> None:
        super().__init__(config, MLPNetwork(config))

    def _network(self, scaled_action, c_noise, obs, goal, **options):
        return self.network(scaled_action, c_noise, obs, goal), []


def test_a_denoiser_kind_is_one_class(tmp_path):
    config = MoDEPolicyConfig.from_dict({
        **MoDEPolicyConfig(language_encoder="onehot", tasks=["a"]).to_dict(),
        "denoiser": {"kind": "mlp", "hidden": 24},
    })  # fmt: skip
    assert isinstance(config.denoiser, MLPDenoiserConfig) and config.denoiser.obs_dim == 39
    stats = {STATE_KEY: {"mean": [0.0] * 39, "std": [1.0] * 39},
             ACTION_KEY: {"min": [-1.0] * 4, "max": [1.0] * 4}}  # fmt: skip
    policy = MoDEPolicy(config, stats)
    assert isinstance(policy.denoiser, MLPDenoiser)
    batch = {STATE_KEY: torch.randn(3, 1, 39), ACTION_KEY: torch.rand(3, 10, 4) * 2 - 1, "task": ["a"] * 3}
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    policy.save_pretrained(tmp_path / "p")
    loaded = load_policy(tmp_path / "p", device="cpu")
    obs = {STATE_KEY: torch.zeros(2, 39), "task": "a"}
    assert loaded.predict_action_chunk(obs).shape == (2, 10, 4)


# A policy type defined here, trained and evaluated through the command line ---------------------------
@dataclass
class ToyPolicyConfig(PolicyConfig):
    describe: ClassVar[str] = "toy policy"
    hidden: int = 16


@register_policy("toy")
class ToyPolicy(ChunkingPolicy):
    """A linear map from the normalised state history and the goal to the normalised action chunk."""

    config_class = ToyPolicyConfig

    def __init__(self, config: ToyPolicyConfig, dataset_stats=None, *, language_encoder=None) -> None:
        super().__init__(config)
        self._init_language(language_encoder)
        self._init_normalization(dataset_stats)
        inputs = config.n_obs_steps * config.state_dim + self.language_encoder.dim
        self.net = nn.Sequential(nn.Linear(inputs, config.hidden), nn.Mish(),
                                 nn.Linear(config.hidden, config.chunk_size * config.action_dim))  # fmt: skip

    def _chunk(self, state: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        goal = self.language_encoder.encode(tasks).to(state.device)
        features = torch.cat([self.normalizer.normalize(STATE_KEY, state).flatten(1), goal], dim=1)
        return self.net(features).view(len(state), self.config.chunk_size, self.config.action_dim)

    def compute_loss(self, batch):
        state = batch[STATE_KEY].float()
        target = self.normalizer.normalize(ACTION_KEY, batch[ACTION_KEY].float())
        loss = (self._chunk(state, instructions(batch, len(state))) - target).square().mean()
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict_action_chunk(self, obs, *, generator=None):
        state = self._observation(obs, history=True)[STATE_KEY]
        chunk = self._chunk(state, instructions(obs, len(state))).clamp(-1, 1)
        return self._checked_actions(self.normalizer.unnormalize(ACTION_KEY, chunk))


def test_a_policy_type_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    pytest.importorskip("metaworld")
    assert "toy" in POLICIES.names()
    data = write_dataset(tmp_path / "data", episodes_per_task=1)
    run = tmp_path / "run"
    code = main(["train", "--policy-type", "toy", "--dataset", str(data), "--out", str(run), "--steps", "2",
                 "--batch-size", "4", "--set", "language_encoder=onehot", "--set", "hidden=8"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run / "policy" / "config.json").read_text())
    assert saved["policy_type"] == "toy" and saved["hidden"] == 8
    assert isinstance(load_policy(run, device="cpu"), ToyPolicy)
    results_dir = tmp_path / "results"
    code = main(["eval", "--policy", str(run), "--tasks", "reach", "--episodes-per-task", "1",
                 "--workers", "1", "--max-episode-steps", "5", "--out", str(results_dir)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((results_dir / "results.json").read_text())
    assert results["episodes"][0]["steps"] == 5 and results["policy"] == str(run / "policy")
    # A resumed run keeps its type; the capability train needs is asked for, not assumed.
    code = main(["train", "--dataset", str(data), "--out", str(run), "--resume", "--steps", "3"])
    assert code == 0, capsys.readouterr().err
    code = main(["train", "--policy-type", "vdd", "--dataset", str(data), "--out", str(tmp_path / "v")])
    assert code == 2 and "mode-policy distill" in capsys.readouterr().err
    code = main(["eval", "--policy", str(run), "--no-expert-cache", "--tasks", "reach"])
    assert code == 2 and "has no expert cache" in capsys.readouterr().err


def test_the_receding_horizon_is_shared_by_select_action_and_evaluate():
    """select_action, step by step, gives the actions evaluate's batched horizon gives."""
    from mode_policy.policies.queue import RecedingHorizon

    policy = tiny_policy(n_obs_steps=2).eval()
    config = policy.config
    rng = np.random.default_rng(0)
    states = [torch.from_numpy(rng.normal(size=(3, config.state_dim)).astype(np.float32)) for _ in range(7)]
    tasks = make_obs(config, batch=3)["task"]
    policy.reset()
    generator = torch.Generator().manual_seed(0)
    stepwise = [policy.select_action({STATE_KEY: s, "task": tasks}, generator=generator) for s in states]
    horizon, generator = (
        RecedingHorizon(config.n_obs_steps, config.n_action_steps),
        torch.Generator().manual_seed(0),
    )
    batched = []
    for s in states:
        horizon.observe({STATE_KEY: s})
        if horizon.needs_chunk:
            horizon.queue(
                policy.predict_action_chunk({**horizon.history(), "task": tasks}, generator=generator)
            )
        batched.append(horizon.pop())
    torch.testing.assert_close(torch.stack(stepwise), torch.stack(batched), rtol=0, atol=0)
