"""The MoDE denoiser: preconditioning, shapes, errors that name the fix, save/load, and learning a toy."""

import math

import pytest
import torch

from mode_policy import MoDEConfig, MoDEDenoiser
from mode_policy.diffusion import EDMPreconditioning
from mode_policy.training.toy import train_two_mode_toy
from tests.conftest import random_inputs, tiny_config, tiny_denoiser


def test_preconditioning_matches_edm_formulas():
    sigma_data = 0.5
    coefficients = EDMPreconditioning(sigma_data).coefficients(
        torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=torch.float64)
    )
    for i, s in enumerate([0.002, 0.5, 3.0, 80.0]):
        assert coefficients.c_skip[i].item() == pytest.approx(
            sigma_data**2 / (s**2 + sigma_data**2), rel=1e-12
        )
        assert coefficients.c_out[i].item() == pytest.approx(
            s * sigma_data / math.sqrt(s**2 + sigma_data**2), rel=1e-12
        )
        assert coefficients.c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sigma_data**2), rel=1e-12)
        assert coefficients.c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_denoiser_output_is_preconditioned_network_output():
    denoiser = tiny_denoiser().eval()
    x, obs, goal = random_inputs(denoiser.config, 3)
    sigma = torch.tensor(2.0, dtype=torch.float64)
    c = denoiser.preconditioning.coefficients(sigma)
    raw, _ = denoiser.network(c.c_in * x, c.c_noise.reshape(1), obs, goal)
    torch.testing.assert_close(denoiser(x, sigma, obs, goal), c.c_skip * x + c.c_out * raw)


def test_loss_is_mse_against_the_edm_target():
    denoiser = tiny_denoiser(num_experts=1, top_k=1).eval()  # dense: no router loss term
    action, obs, goal = random_inputs(denoiser.config, 5)
    sigma = torch.rand(5, dtype=torch.float64) + 0.1
    noise = torch.randn_like(action)
    loss = denoiser.loss(action, obs, goal, sigma=sigma, noise=noise)
    noisy = action + sigma.view(-1, 1, 1) * noise
    denoised = denoiser(noisy, sigma, obs, goal)
    c = denoiser.preconditioning.coefficients(sigma.view(-1, 1, 1))
    # D = c_skip x + c_out F, so F - target = (D - action) / c_out.
    expected = ((denoised - action) / c.c_out).square().mean()
    torch.testing.assert_close(loss.diffusion, expected)
    torch.testing.assert_close(loss.total, expected)


def test_loss_mask_ignores_padded_actions():
    denoiser = tiny_denoiser().eval()
    action, obs, goal = random_inputs(denoiser.config, 2)
    sigma = torch.ones(2, dtype=torch.float64)
    noise = torch.randn_like(action)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    base = denoiser.loss(action, obs, goal, sigma=sigma, noise=noise, action_mask=mask).diffusion
    corrupted = action.clone()
    corrupted[0, 2:] += 100  # only padded positions change: causal attention keeps earlier outputs intact
    changed = denoiser.loss(corrupted, obs, goal, sigma=sigma, noise=noise, action_mask=mask).diffusion
    torch.testing.assert_close(base, changed)


def test_loss_includes_weighted_router_losses():
    denoiser = tiny_denoiser(load_balance_weight=0.5, router_z_loss_weight=0.1)
    action, obs, goal = random_inputs(denoiser.config, 4)
    loss = denoiser.loss(action, obs, goal, sigma=torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(loss.total, loss.diffusion + 0.5 * loss.load_balance + 0.1 * loss.z_loss)
    assert loss.expert_fraction.shape == (2, 4)
    loss.total.backward()
    router_grad = denoiser.network.blocks[0].moe.router.net[0].weight.grad
    assert router_grad is not None and router_grad.abs().sum() > 0


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_attention_masks(attention):
    denoiser = tiny_denoiser(attention=attention).eval()
    x, obs, goal = random_inputs(denoiser.config, 1)
    base = denoiser(x, 1.0, obs, goal)
    later = x.clone()
    later[:, -1] += 5.0
    changed = denoiser(later, 1.0, obs, goal)
    first_action_changed = not torch.allclose(base[:, 0], changed[:, 0])
    assert first_action_changed == (attention == "bidirectional")


def test_many_observation_and_goal_tokens():
    denoiser = tiny_denoiser(
        num_obs_tokens=3, obs_dim=7, num_goal_tokens=2, goal_dim=11, chunk_size=6, action_dim=3
    )
    action, obs, goal = random_inputs(denoiser.config, 2)
    assert denoiser(action, torch.ones(2, dtype=torch.float64), obs, goal).shape == (2, 6, 3)


def test_wrong_shapes_name_the_config_field():
    denoiser = tiny_denoiser()
    action, obs, goal = random_inputs(denoiser.config, 2)
    with pytest.raises(ValueError, match="obs_dim=5"):
        denoiser(action, 1.0, torch.randn(2, 6, dtype=torch.float64), goal)
    with pytest.raises(ValueError, match="chunk_size"):
        denoiser(action[:, :3], 1.0, obs, goal)
    with pytest.raises(ValueError, match="goal_dim=3"):
        denoiser(action, 1.0, obs, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \(batch,\)"):
        denoiser(action, torch.ones(3, dtype=torch.float64), obs, goal)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="divisible by heads"):
        MoDEConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="top_k"):
        MoDEConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="router_input must be one of"):
        MoDEConfig(router_input="tokens")
    with pytest.raises(ValueError, match="shared_expert"):
        MoDEConfig(shared_expert=True, num_experts=4, top_k=1)
    with pytest.raises(ValueError, match="unknown MoDEConfig key"):
        MoDEConfig.from_dict({"widht": 3})


def test_save_and_load_roundtrip(tmp_path):
    denoiser = tiny_denoiser(dtype=torch.float32, shared_expert=True, num_experts=5, top_k=3).eval()
    denoiser.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MoDEDenoiser.from_pretrained(tmp_path / "model").eval()
    assert loaded.config == denoiser.config
    x, obs, goal = random_inputs(denoiser.config, 3, dtype=torch.float32)
    torch.testing.assert_close(loaded(x, 0.7, obs, goal), denoiser(x, 0.7, obs, goal), atol=0, rtol=0)


def test_loading_a_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        MoDEDenoiser.from_pretrained(tmp_path)
    tmp_path.joinpath("config.json").write_text("{not json")
    tmp_path.joinpath("model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not valid JSON"):
        MoDEDenoiser.from_pretrained(tmp_path)


def test_parameter_counts_exclude_idle_experts():
    config = tiny_config(num_experts=4, top_k=2)
    counts = MoDEDenoiser(config).parameter_counts()
    per_expert = 3 * config.width * config.expert_hidden
    assert counts["total"] - counts["active"] == config.depth * 2 * per_expert
    dense = MoDEDenoiser(tiny_config(num_experts=1, top_k=1)).parameter_counts()
    assert dense["total"] == dense["active"]


def test_tiny_denoiser_learns_both_modes_of_a_2d_toy():
    # Bounded by steps, not by time: on a loaded machine a time budget gave too few steps to learn.
    result = train_two_mode_toy(seconds=600.0, max_steps=800, samples=1000, seed=0)
    assert result.steps == 800
    assert all(0.3 <= fraction <= 0.7 for fraction in result.mode_fractions), result.mode_fractions
    assert result.off_mode_fraction < 0.1, result.off_mode_fraction


@pytest.mark.parametrize("stochastic", [False, True])
def test_training_routes_as_eval_unless_stochastic_routing(stochastic):
    """The default trains with eval's top-k: the loss is the same in train and eval mode and for any draw.
    stochastic_routing=True samples each token's experts as the MoDE reference does: the loss then depends
    on the draw."""
    denoiser = tiny_denoiser(**({"stochastic_routing": True} if stochastic else {}))
    assert denoiser.config.stochastic_routing is stochastic  # False is the default
    action, obs, goal = random_inputs(denoiser.config, 6)
    sigma = torch.rand(6, dtype=torch.float64) * 5 + 0.1
    noise = torch.randn_like(action)

    def diffusion_loss(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return denoiser.loss(action, obs, goal, sigma=sigma, noise=noise, generator=generator).diffusion

    first, second = diffusion_loss(0), diffusion_loss(1)  # a new denoiser is in training mode
    denoiser.eval()
    evaluated = diffusion_loss(0)
    if stochastic:
        assert not torch.equal(first, second)
    else:
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        torch.testing.assert_close(first, evaluated, atol=1e-12, rtol=0)
