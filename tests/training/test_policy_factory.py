import pytest

from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.nn.cnn import CNNDenoiserConfig
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.mot import MoTConfig
from mode_policy.training.train import policy_config_for


def test_overrides_pick_any_denoiser_of_the_family(tiny_dataset):
    dataset = LeRobotDataset(tiny_dataset)
    config = policy_config_for(dataset, ["denoiser.router_input=task", "language_encoder=onehot"])
    assert isinstance(config.denoiser, MoDEConfig) and config.denoiser.router_input == "task"
    config = policy_config_for(dataset, ["denoiser.kind=cnn", "denoiser.down_dims=[16, 32]"])
    assert isinstance(config.denoiser, CNNDenoiserConfig) and list(config.denoiser.down_dims) == [16, 32]
    assert config.denoiser.obs_dim == 39 and config.denoiser.action_dim == 4
    with pytest.raises(ValueError, match="width"):  # a transformer field on the CNN
        policy_config_for(dataset, ["denoiser.kind=cnn", "denoiser.width=64"])
    with pytest.raises(ValueError, match="kind must be"):
        policy_config_for(dataset, ["denoiser.kind=rnn"])
    config = policy_config_for(
        dataset, ["denoiser.kind=mot", 'denoiser.token_groups=["noise", "goal+obs", "action"]']
    )
    assert isinstance(config.denoiser, MoTConfig) and config.denoiser.token_groups == [
        "noise",
        "goal+obs",
        "action",
    ]
    assert config.denoiser.obs_dim == 39 and config.denoiser.action_dim == 4
    with pytest.raises(ValueError, match="num_experts"):  # a mixture-of-experts field on MoT
        policy_config_for(dataset, ["denoiser.kind=mot", "denoiser.num_experts=4"])
