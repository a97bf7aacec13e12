"""Mixture-of-Transformers: per-group weights with global attention, equal to a dense transformer when
there is one group, honest parameter counts, config checks and IO (the policy override: training tests)."""

import pytest
import torch

from mode_policy.diffusion import exponential_schedule
from mode_policy.nn import MoTConfig, MoTDenoiser, load_denoiser
from mode_policy.nn.expert_cache import can_cache_experts
from tests.conftest import random_inputs, tiny_denoiser

SIGMAS = exponential_schedule(4, 0.05, 80.0)
SIZES = dict(width=32, depth=2, heads=4, obs_dim=5, goal_dim=3, chunk_size=4, action_dim=2, goal_dropout=0.0)


def tiny_mot(dtype=torch.float64, **overrides) -> MoTDenoiser:
    return MoTDenoiser(MoTConfig(**{**SIZES, "ffn_hidden_mult": 4, **overrides})).to(dtype)


def test_shapes_loss_and_sampling_for_any_grouping():
    for groups in (
        ["noise+goal+obs", "action"],
        ["noise", "goal", "obs", "action"],
        ["action+goal", "noise+obs"],
    ):
        denoiser = tiny_mot(token_groups=groups)
        x, obs, goal = random_inputs(denoiser.config, 3)
        loss = denoiser.loss(x, obs, goal, sigma=torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64))
        loss.total.backward()
        assert torch.isfinite(loss.total) and loss.load_balance == 0  # no router, so no balance loss
        assert all(p.grad is not None for p in denoiser.parameters())  # every group's weights are used
        assert denoiser.eval().sample_actions(obs, goal, SIGMAS).shape == x.shape
        assert not can_cache_experts(denoiser)  # no experts to choose: the capability is absent
        assert denoiser.sampling_cache == "context"  # what it caches instead (causal attention)


def test_one_group_is_the_dense_transformer():
    dense = tiny_denoiser(num_experts=1, top_k=1).eval()
    mot = tiny_mot(token_groups=["noise+goal+obs+action"]).eval()
    state = {}
    for name, tensor in dense.state_dict().items():
        block = name.split(".")
        if block[1] == "blocks":  # network.blocks.L.<module> -> network.layers.L.weights.0.<module>
            rest = ".".join(block[3:])
            rest = (
                rest.replace("attn.qkv", "qkv").replace("attn.proj", "proj").replace("attn.q_norm", "q_norm")
            )
            rest = (
                rest.replace("attn.k_norm", "k_norm")
                .replace("moe_norm", "ffn_norm")
                .replace("moe.dense", "ffn")
            )
            name = f"network.layers.{block[2]}.weights.0.{rest}"
        state[name] = tensor
    mot.load_state_dict(state)
    x, obs, goal = random_inputs(mot.config, 3)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(mot(x, sigma, obs, goal), dense(x, sigma, obs, goal), rtol=0, atol=1e-12)
    assert mot.parameter_counts() == dense.parameter_counts()


def test_a_gathered_grouping_equals_the_sliced_one_with_the_same_weights():
    sliced = tiny_mot(token_groups=["noise+goal+obs", "action"]).eval()
    gathered = tiny_mot(token_groups=["action", "noise+goal+obs"]).eval()  # not in sequence order
    assert sliced.network.groups.sliced and not gathered.network.groups.sliced
    state = {}
    for name, tensor in sliced.state_dict().items():  # group 0 <-> group 1
        name = name.replace(".weights.0.", ".weights.x.").replace(".weights.1.", ".weights.0.")
        state[name.replace(".weights.x.", ".weights.1.")] = tensor
    gathered.load_state_dict(state)
    x, obs, goal = random_inputs(sliced.config, 2)
    torch.testing.assert_close(gathered(x, 1.0, obs, goal), sliced(x, 1.0, obs, goal), rtol=0, atol=1e-12)


def test_each_token_runs_its_own_groups_weights():
    denoiser = tiny_mot().eval()
    x, obs, goal = random_inputs(denoiser.config, 2)
    before = denoiser(x, 1.0, obs, goal)
    last = denoiser.network.layers[-1].weights
    with torch.no_grad():  # the last layer's context feed-forward cannot reach the action outputs
        last[0].ffn.w_out.weight.add_(1.0)
    torch.testing.assert_close(denoiser(x, 1.0, obs, goal), before, rtol=0, atol=0)
    with torch.no_grad():  # the action group's does
        last[1].ffn.w_out.weight.add_(1.0)
    assert not torch.allclose(denoiser(x, 1.0, obs, goal), before)
    with torch.no_grad():  # and the context's attention weights reach them through global attention
        denoiser.network.layers[-1].weights[0].qkv.weight.mul_(2.0)
    assert not torch.allclose(denoiser(x, 1.0, obs, goal), before)


@pytest.mark.parametrize(
    "groups", [["noise+goal+obs", "action"], ["noise", "goal", "obs", "action"], ["action+goal", "noise+obs"]]
)
@pytest.mark.parametrize("method", ["ddim", "heun", "dpmpp_2m"])
def test_the_context_cache_samples_what_the_whole_sequence_does(groups, method):
    denoiser = tiny_mot(token_groups=groups).eval()
    _, obs, goal = random_inputs(denoiser.config, 3)
    calls = []
    denoiser.network.register_forward_hook(lambda *args: calls.append(1))  # the whole-sequence pass

    def draw(use_cache: bool) -> torch.Tensor:
        generator = torch.Generator().manual_seed(7)
        return denoiser.sample_actions(
            obs, goal, SIGMAS, method=method, generator=generator, use_cache=use_cache
        )

    cached = draw(True)
    assert not calls  # every evaluation took its step's cached context
    torch.testing.assert_close(cached, draw(False), rtol=0, atol=1e-12)
    assert calls  # and the uncached draw ran the whole sequence


def test_the_context_cache_is_the_forward_at_every_step_and_falls_back_off_the_schedule():
    denoiser = tiny_mot().eval()
    x, obs, goal = random_inputs(denoiser.config, 2)
    model = denoiser.bind(obs, goal, SIGMAS)
    for step, sigma in enumerate(SIGMAS[:-1]):
        torch.testing.assert_close(model(x, sigma, step), denoiser(x, sigma, obs, goal), rtol=0, atol=1e-12)
    raised = SIGMAS[1] * 1.3  # a churned sigma_hat still carries its step: it is not the cached level
    torch.testing.assert_close(model(x, raised, 1), denoiser(x, raised, obs, goal), rtol=0, atol=0)


def test_bidirectional_attention_has_no_context_cache():
    denoiser = tiny_mot(attention="bidirectional").eval()
    _, obs, goal = random_inputs(denoiser.config, 2)
    assert denoiser.sampling_cache is None  # the context attends to the actions: nothing to reuse
    with pytest.raises(ValueError, match="causal attention"):
        denoiser.network.encode_context(torch.ones(2, dtype=torch.float64), obs, goal)
    generator = torch.Generator().manual_seed(0)
    assert denoiser.sample_actions(obs, goal, SIGMAS, generator=generator).shape == (2, 4, 2)


def test_active_parameters_are_one_groups_weights():
    two = tiny_mot().parameter_counts()
    one = tiny_mot(token_groups=["noise+goal+obs+action"]).parameter_counts()
    four = tiny_mot(token_groups=["noise", "goal", "obs", "action"]).parameter_counts()
    assert two["active"] == one["active"] == one["total"] == four["active"]
    assert two["total"] - one["total"] == (four["total"] - one["total"]) // 3 > 0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"token_groups": ["noise+goal", "action"]}, "exactly one group"),
        ({"token_groups": ["noise+goal+obs", "action", "action"]}, "exactly one group"),
        ({"token_groups": ["noise+goal+obs", "actions"]}, "exactly one group"),
        ({"token_groups": "action"}, "exactly one group"),
        ({"width": 30}, "divisible by heads"),
        ({"attention": "sliding"}, "attention"),
        ({"dropout": 1.0}, "dropout"),
        ({"ffn_hidden_mult": 0}, "ffn_hidden_mult"),
    ],
)
def test_bad_configs_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        MoTConfig(**{**SIZES, **overrides})


def test_save_and_load_round_trip(tmp_path):
    denoiser = tiny_mot(torch.float32, token_groups=["noise", "goal+obs", "action"]).eval()
    denoiser.save_pretrained(tmp_path)
    loaded = load_denoiser(tmp_path).eval()
    assert isinstance(loaded, MoTDenoiser) and loaded.config == denoiser.config
    x, obs, goal = random_inputs(denoiser.config, 2, dtype=torch.float32)
    torch.testing.assert_close(loaded(x, 1.0, obs, goal), denoiser(x, 1.0, obs, goal), rtol=0, atol=0)
