"""The CNN Diffusion Policy baseline: shapes, padding, loss, MoDEDenoiser interface parity, IO, FLOPs."""

import json

import pytest
import torch
from torch import nn

from mode_policy.diffusion import exponential_schedule
from mode_policy.nn import CNNDenoiser, CNNDenoiserConfig, load_denoiser
from mode_policy.nn.denoiser import CONFIG_FILE, WEIGHTS_FILE, MoDEDenoiser
from mode_policy.nn.edm_denoiser import EDMDenoiser
from mode_policy.nn.expert_cache import can_cache_experts
from mode_policy.nn.flops import count_chunk_macs
from tests.conftest import random_inputs, tiny_denoiser

SIGMAS = exponential_schedule(4, 0.05, 80.0)


def tiny_cnn_config(**overrides) -> CNNDenoiserConfig:
    values = dict(
        obs_dim=5,
        goal_dim=3,
        chunk_size=4,
        action_dim=2,
        down_dims=(16, 32, 64),
        n_groups=4,
        cond_embed_dim=16,
        goal_dropout=0.0,
    )
    values.update(overrides)
    return CNNDenoiserConfig(**values)


def tiny_cnn(dtype=torch.float64, **overrides) -> CNNDenoiser:
    return CNNDenoiser(tiny_cnn_config(**overrides)).to(dtype)


@pytest.mark.parametrize(
    ("chunk_size", "down_dims"),
    [
        (4, (16, 32, 64)),
        (10, (16, 32, 64)),
        (7, (16, 32, 64)),
        (1, (16, 32)),
        (5, (16,)),
        (16, (8, 16, 32, 64)),
    ],
)
def test_output_shapes_for_any_chunk_size(chunk_size, down_dims):
    denoiser = tiny_cnn(chunk_size=chunk_size, down_dims=down_dims).eval()
    config = denoiser.config
    assert config.padded_chunk_size % config.downsample_factor == 0
    assert chunk_size <= config.padded_chunk_size < chunk_size + config.downsample_factor
    x, obs, goal = random_inputs(config, 3)
    assert denoiser(x, torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64), obs, goal).shape == x.shape
    assert denoiser(x, 2.0, obs[:, 0], goal[:, 0]).shape == x.shape  # scalar sigma, untokenized inputs
    assert denoiser.sample_actions(obs, goal, SIGMAS).shape == x.shape


def test_multiple_obs_and_goal_tokens_are_flattened_into_the_condition():
    denoiser = tiny_cnn(num_obs_tokens=3, num_goal_tokens=2).eval()
    x, obs, goal = random_inputs(denoiser.config, 2)
    out = denoiser(x, 1.0, obs, goal)
    assert out.shape == x.shape
    changed = obs.clone()
    changed[:, 2] += 1.0  # the last observation token matters
    assert not torch.allclose(denoiser(x, 1.0, changed, goal), out)


def test_denoiser_output_is_preconditioned_network_output():
    denoiser = tiny_cnn().eval()
    x, obs, goal = random_inputs(denoiser.config, 3)
    sigma = torch.tensor(2.0, dtype=torch.float64)
    c = denoiser.preconditioning.coefficients(sigma)
    raw = denoiser.network(c.c_in * x, c.c_noise.reshape(1), obs, goal)
    torch.testing.assert_close(denoiser(x, sigma, obs, goal), c.c_skip * x + c.c_out * raw)


def test_padding_does_not_leak_between_samples_and_batch_sigma_matches_per_sample():
    denoiser = tiny_cnn(chunk_size=6).eval()
    x, obs, goal = random_inputs(denoiser.config, 3)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    batched = denoiser(x, sigma, obs, goal)
    for i in range(3):
        torch.testing.assert_close(
            denoiser(x[i : i + 1], sigma[i], obs[i : i + 1], goal[i : i + 1]), batched[i : i + 1]
        )


def test_loss_is_finite_differentiable_and_matches_the_edm_target():
    denoiser = tiny_cnn(chunk_size=5).eval()
    action, obs, goal = random_inputs(denoiser.config, 4)
    sigma = torch.rand(4, dtype=torch.float64) + 0.1
    noise = torch.randn_like(action)
    loss = denoiser.loss(action, obs, goal, sigma=sigma, noise=noise)
    assert torch.isfinite(loss.total)
    torch.testing.assert_close(loss.total, loss.diffusion)
    assert loss.load_balance.item() == 0 and loss.z_loss.item() == 0
    assert loss.expert_fraction.shape == (0, 0)
    denoised = denoiser(action + sigma.view(-1, 1, 1) * noise, sigma, obs, goal)
    c = denoiser.preconditioning.coefficients(sigma.view(-1, 1, 1))
    torch.testing.assert_close(loss.diffusion, ((denoised - action) / c.c_out).square().mean())
    loss.total.backward()
    grads = [p.grad for p in denoiser.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert denoiser.network.head.weight.grad.abs().sum() > 0


def test_loss_mask_averages_only_real_actions():
    # Convolutions mix neighbouring positions, so padded actions still shape the input; the mask removes
    # their errors from the average.
    denoiser = tiny_cnn().eval()
    action, obs, goal = random_inputs(denoiser.config, 2)
    sigma = torch.ones(2, dtype=torch.float64)
    noise = torch.randn_like(action)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    masked = denoiser.loss(action, obs, goal, sigma=sigma, noise=noise, action_mask=mask).diffusion
    denoised = denoiser(action + noise, sigma, obs, goal)
    c_out = denoiser.preconditioning.coefficients(sigma[0]).c_out
    errors = ((denoised - action) / c_out).square().mean(dim=-1)
    torch.testing.assert_close(masked, errors[mask.bool()].mean())


def test_goal_dropout_only_in_training():
    denoiser = tiny_cnn(goal_dropout=0.5)
    x, obs, goal = random_inputs(denoiser.config, 2)
    denoiser.eval()
    torch.testing.assert_close(denoiser(x, 1.0, obs, goal), denoiser(x, 1.0, obs, goal))
    denoiser.train()
    assert not torch.allclose(denoiser(x, 1.0, obs, goal), denoiser(x, 1.0, obs, goal))


def test_input_errors_name_the_config_field():
    denoiser = tiny_cnn()
    x, obs, goal = random_inputs(denoiser.config, 2)
    with pytest.raises(ValueError, match=r"CNNDenoiserConfig\.chunk_size"):
        denoiser(x[:, :3], 1.0, obs, goal)
    with pytest.raises(ValueError, match=r"CNNDenoiserConfig\.num_obs_tokens and obs_dim"):
        denoiser(x, 1.0, obs[..., :4], goal)
    with pytest.raises(ValueError, match=r"CNNDenoiserConfig\.num_goal_tokens and goal_dim"):
        denoiser(x, 1.0, obs, goal[:1])
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        denoiser(x, torch.ones(3, dtype=torch.float64), obs, goal)


def test_moe_only_capabilities_are_absent_not_faked():
    denoiser = tiny_cnn().eval()
    config = denoiser.config
    assert config.tag == "cnn" and not hasattr(config, "cacheable") and not hasattr(config, "is_dense")
    assert not hasattr(denoiser, "cache_experts") and not can_cache_experts(denoiser)
    counts = denoiser.parameter_counts()
    assert counts["total"] == counts["active"] == sum(p.numel() for p in denoiser.parameters())
    _, obs, goal = random_inputs(config, 2)
    first = denoiser.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(1))
    again = denoiser.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    with pytest.raises(TypeError, match="use_cache"):
        denoiser.sample_actions(obs, goal, SIGMAS, use_cache=True)  # there is no cache to ask for


def test_public_interface_matches_mode_denoiser():
    shared = {name for name in dir(EDMDenoiser) if not name.startswith("_")} - set(dir(nn.Module))
    missing = sorted(name for name in shared if not hasattr(CNNDenoiser, name))
    assert not missing
    expert_cache = {"cache_experts", "clear_expert_cache"}  # MoDE's own capability
    assert expert_cache <= set(dir(MoDEDenoiser)) and not expert_cache & set(dir(CNNDenoiser))


def test_save_load_round_trip_gives_identical_samples(tmp_path):
    denoiser = tiny_cnn(chunk_size=6).eval()
    _, obs, goal = random_inputs(denoiser.config, 3)
    before = denoiser.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(7))
    denoiser.save_pretrained(tmp_path / "cnn")
    assert (tmp_path / "cnn" / WEIGHTS_FILE).is_file()
    saved = json.loads((tmp_path / "cnn" / CONFIG_FILE).read_text())
    assert saved["kind"] == "cnn" and saved["down_dims"] == [16, 32, 64]
    assert not list((tmp_path / "cnn").glob(".*.tmp"))  # no temporary files left behind
    loaded = CNNDenoiser.from_pretrained(tmp_path / "cnn").to(torch.float64).eval()
    assert loaded.config == denoiser.config
    after = loaded.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert isinstance(load_denoiser(tmp_path / "cnn"), CNNDenoiser)


def test_load_denoiser_tells_kinds_apart(tmp_path):
    tiny_denoiser().save_pretrained(tmp_path / "mode")
    assert isinstance(load_denoiser(tmp_path / "mode"), MoDEDenoiser)
    with pytest.raises(ValueError, match=r"MoDEDenoiser\.from_pretrained"):
        CNNDenoiser.from_pretrained(tmp_path / "mode")
    tiny_cnn().save_pretrained(tmp_path / "cnn")
    with pytest.raises(ValueError, match="unknown MoDEConfig key"):
        MoDEDenoiser.from_pretrained(tmp_path / "cnn")


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        CNNDenoiser.from_pretrained(tmp_path)
    tiny_cnn().save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    config["down_dims"] = [16, 32]
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"was config\.json edited"):
        CNNDenoiser.from_pretrained(tmp_path / "a")


def test_config_round_trip_and_validation(tmp_path):
    config = tiny_cnn_config(down_dims=[16, 32])
    assert config.down_dims == (16, 32)
    assert CNNDenoiserConfig.from_dict(config.to_dict()) == config
    config.save(tmp_path / "config.json")
    assert CNNDenoiserConfig.load(tmp_path / "config.json") == config
    assert CNNDenoiserConfig(chunk_size=10).padded_chunk_size == 12  # default (128, 256, 512): factor 4
    with pytest.raises(ValueError, match=r"unknown CNNDenoiserConfig key\(s\) \['bogus'\]"):
        CNNDenoiserConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="kind 'mode'"):
        CNNDenoiserConfig.from_dict({"kind": "mode"})
    with pytest.raises(ValueError, match="looks like a MoDE transformer config"):
        CNNDenoiserConfig.from_dict({"width": 256, "depth": 8})
    bad = [
        ({"chunk_size": 0}, r"chunk_size must be a positive integer"),
        ({"down_dims": ()}, r"at least one level"),
        ({"down_dims": 128}, r"down_dims must be a non-empty list"),
        ({"down_dims": (16, 30)}, r"down_dims\[1\] = 30 must be divisible by n_groups \(4\)"),
        ({"kernel_size": 4}, r"kernel_size must be odd.*try 5"),
        ({"cond_embed_dim": 15}, r"cond_embed_dim must be even"),
        ({"goal_dropout": 1.0}, r"goal_dropout must be in \[0, 1\)"),
        ({"sigma_data": 0.0}, r"sigma_data must be > 0"),
        ({"n_groups": True}, r"n_groups must be a positive integer"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            tiny_cnn_config(**overrides)
    with pytest.raises(FileNotFoundError, match=r"CNNDenoiserConfig\.save"):
        CNNDenoiserConfig.load(tmp_path / "missing.json")


def _expected_conv_and_linear_macs(denoiser: CNNDenoiser, run) -> int:
    """MACs of every Conv1d, ConvTranspose1d and Linear that ``run()`` calls, from forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.ConvTranspose1d):
            total += inputs[0].numel() * module.out_channels * module.kernel_size[0]
        else:  # Conv1d: every output element sums over in_channels x kernel
            total += output.numel() * module.in_channels * module.kernel_size[0]

    handles = [
        m.register_forward_hook(hook)
        for m in denoiser.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d))
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def test_flop_counter_counts_every_convolution():
    denoiser = tiny_cnn(dtype=torch.float32, chunk_size=6)
    counted = count_chunk_macs(denoiser, SIGMAS, batch_size=3)  # use_cache is moot without experts
    assert counted.macs == count_chunk_macs(denoiser, SIGMAS, batch_size=3, use_cache=False).macs
    assert counted.model_evaluations == 4
    config = denoiser.config
    obs = torch.zeros(3, 1, config.obs_dim)
    goal = torch.zeros(3, 1, config.goal_dim)
    expected = _expected_conv_and_linear_macs(
        denoiser.eval(), lambda: denoiser.sample_actions(obs, goal, SIGMAS)
    )
    assert counted.macs == expected, counted.by_operator
    assert any("convolution" in op and macs > 0 for op, macs in counted.by_operator.items())


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    denoiser = tiny_cnn(dtype=torch.float32, chunk_size=6, down_dims=(32, 64))
    generator = torch.Generator().manual_seed(0)
    config = denoiser.config
    action = torch.randn(8, config.chunk_size, config.action_dim, generator=generator).clamp(-1, 1)
    obs = torch.randn(8, 1, config.obs_dim, generator=generator)
    goal = torch.randn(8, 1, config.goal_dim, generator=generator)
    sigma = torch.full((8,), 0.5)
    noise = torch.randn(action.shape, generator=generator)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    losses = []
    for _ in range(200):
        loss = denoiser.loss(action, obs, goal, sigma=sigma, noise=noise).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
