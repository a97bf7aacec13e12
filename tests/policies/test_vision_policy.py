"""Image policies: tokens and state-only compatibility (fast), and a collect -> train -> eval smoke test."""

import numpy as np
import pytest
import torch

from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig

CAMERA = "observation.images.corner"
STATS = {
    "observation.state": {"mean": [0.0] * 5, "std": [1.0] * 5, "min": [-1.0] * 5, "max": [1.0] * 5},
    "action": {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4},
}


def _config(**kwargs):
    values = {
        "state_dim": 5,
        "language_encoder": "onehot",
        "tasks": ["a", "b"],
        "image_keys": [CAMERA],
        "n_obs_steps": 2,
        "image_size": 40,  # the smallest ResNet input of a 2x2 last feature map is 33
        "vision_feature_dim": 16,
        "denoiser": {"width": 32, "depth": 2, "heads": 2, "num_experts": 4, "top_k": 2},
    }
    values.update(kwargs)
    return MoDEPolicyConfig.from_dict(values)


def test_state_only_config_is_unchanged():
    config = MoDEPolicyConfig(state_dim=39, language_encoder="onehot", tasks=["a"])
    assert config.denoiser.obs_dim == 39 and config.denoiser.num_obs_tokens == 1
    policy = MoDEPolicy(config, None)
    assert not any(k.startswith(("vision", "state_proj")) for k in policy.state_dict())


@pytest.mark.parametrize("use_state", [True, False])
def test_image_policy_trains_and_acts(use_state, tmp_path):
    torch.manual_seed(0)
    config = _config(use_state=use_state)
    assert config.denoiser.num_obs_tokens == 2 * (1 + use_state)
    assert config.denoiser.obs_dim == 16
    policy = MoDEPolicy(config, STATS)
    batch = {
        CAMERA: torch.randint(0, 256, (4, 2, 3, 40, 40), dtype=torch.uint8),
        "action": torch.rand(4, 10, 4),
        "task": ["a", "b", "a", "b"],
    }
    if use_state:
        batch["observation.state"] = torch.randn(4, 2, 5)
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    assert policy.vision.cameras[0].trunk.film[0].proj.weight.grad is not None
    policy.save_pretrained(tmp_path / "p")
    loaded = MoDEPolicy.from_pretrained(tmp_path / "p")
    loaded.reset()
    obs = {CAMERA: np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8), "task": "a"}
    if use_state:
        obs["observation.state"] = torch.randn(2, 5)
    assert loaded.select_action(obs).shape == (2, 4)


def test_image_only_needs_cameras():
    with pytest.raises(ValueError, match="use_state=False needs image_keys"):
        MoDEPolicyConfig(language_encoder="onehot", tasks=["a"], use_state=False)


@pytest.mark.slow
def test_image_policy_collect_train_eval(tmp_path):
    """2 tasks x 2 demos with one 40 px camera, 3 train steps, 1 short eval episode (~1 min on one core)."""
    pytest.importorskip("metaworld")
    pytest.importorskip("av", reason="PyAV is needed for MP4 camera features: pip install av")
    from mode_policy.evaluation.rollout import evaluate, osmesa_available

    if not osmesa_available():
        pytest.skip("MuJoCo off-screen rendering needs OSMesa on a CPU: apt-get install -y libosmesa6")
    from mode_policy.data import LeRobotDataset
    from mode_policy.envs.collect import collect_demonstrations
    from mode_policy.training.train import train

    data = collect_demonstrations(
        tmp_path / "data",
        tasks="reach-v3,drawer-close-v3",
        episodes_per_task=2,
        progress=False,
        cameras="corner",
        image_size=40,
    )
    dataset = LeRobotDataset(data)
    assert dataset.images(CAMERA).shape == (dataset.num_frames, 40, 40, 3)
    run = train(
        data,
        tmp_path / "run",
        steps=3,
        batch_size=8,
        progress=False,
        policy_overrides={
            "language_encoder": "onehot",
            "image_keys": [CAMERA],
            "use_state": False,
            "vision_norm": "group",
            "vision_feature_dim": 32,
            "denoiser.width": 32,
            "denoiser.depth": 2,
        },
    )
    results = evaluate(
        run, tasks="reach-v3", episodes_per_task=1, num_workers=1, max_episode_steps=10, progress=False
    )
    assert results["episodes"][0]["steps"] <= 10
    assert results["inference"]["ms_per_chunk_batched_mean"] > 0
