"""MoDEPolicyConfig: derived denoiser fields, validation messages and JSON round trips."""

import json

import pytest

from mode_policy.nn import MoDEConfig
from mode_policy.policies import MoDEPolicyConfig


def test_defaults_target_metaworld_and_derive_the_denoiser_interface():
    config = MoDEPolicyConfig()
    denoiser = config.denoiser
    assert (config.state_dim, config.action_dim, config.chunk_size, config.n_action_steps) == (39, 4, 10, 5)
    assert (denoiser.obs_dim, denoiser.action_dim, denoiser.chunk_size, denoiser.goal_dim) == (39, 4, 10, 384)
    assert (denoiser.num_experts, denoiser.top_k, denoiser.router_input) == (4, 2, "sigma")
    assert config.sampling_sigmas().tolist()[0] == 80.0 and config.sampling_sigmas().numel() == 11

    custom = MoDEPolicyConfig(
        state_dim=7, action_dim=3, n_obs_steps=2, chunk_size=6, n_action_steps=6,
        language_encoder="onehot", tasks=["a", "b"], denoiser=MoDEConfig(obs_dim=99, goal_dim=1),
    )  # fmt: skip
    d = custom.denoiser
    assert (d.obs_dim, d.num_obs_tokens, d.action_dim, d.chunk_size, d.goal_dim) == (7, 2, 3, 6, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(n_action_steps=11), "n_action_steps .* cannot exceed chunk_size"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(language_encoder="bert"), "language_encoder must be one of"),
        (dict(language_encoder="onehot"), "needs tasks"),
        (dict(language_encoder="onehot", tasks=["a", "a"]), "distinct"),
        (dict(language_encoder="clip"), "needs language_encoder_path"),
        (dict(sampler="ddpm"), "sampler must be one of"),
        (dict(schedule="cosine"), "unknown schedule 'cosine'"),
        (dict(sigma_min=100.0), "sigma_min must be <= sigma_max"),
        (dict(training_sigma_distribution="uniform"), "unknown sigma distribution"),
        (dict(training_sigma_params={"p_mean": 0.0}), "unknown parameter"),
        (dict(normalization_mapping={"action": "min_max"}), "needs a mode for 'observation.state'"),
        (dict(normalization_mapping={"observation.state": "z", "action": "min_max"}), "must be one of"),
        (dict(use_expert_cache="yes"), "use_expert_cache must be true or false"),
        (dict(denoiser={"width": 30, "heads": 4}), "denoiser: MoDEConfig.width .* divisible by heads"),
    ],
)
def test_validation_errors_are_actionable(overrides, message):
    with pytest.raises(ValueError, match=message):
        MoDEPolicyConfig(**overrides)


def test_round_trip_through_json(tmp_path):
    config = MoDEPolicyConfig(
        language_encoder="onehot",
        tasks=["open the drawer", "close it"],
        training_sigma_distribution="lognormal",
        training_sigma_params={"p_mean": -1.2, "p_std": 1.2},
        denoiser=MoDEConfig(width=64, depth=3, heads=4, shared_expert=True, num_experts=5, top_k=3),
    )
    config.save(tmp_path / "config.json")
    loaded = MoDEPolicyConfig.load(tmp_path / "config.json")
    assert loaded == config
    assert isinstance(loaded.denoiser, MoDEConfig)
    assert json.loads((tmp_path / "config.json").read_text())["denoiser"]["width"] == 64


def test_unknown_keys_and_bad_files_name_the_problem(tmp_path):
    values = MoDEPolicyConfig().to_dict()
    with pytest.raises(ValueError, match=r"unknown MoDEPolicyConfig key\(s\) \['horizon'\]"):
        MoDEPolicyConfig.from_dict({**values, "horizon": 16})
    values["denoiser"]["experts"] = 4
    with pytest.raises(ValueError, match=r"denoiser: unknown MoDEConfig key\(s\) \['experts'\]"):
        MoDEPolicyConfig.from_dict(values)
    with pytest.raises(FileNotFoundError, match=r"no config file at .*MoDEPolicy\.save_pretrained"):
        MoDEPolicyConfig.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        MoDEPolicyConfig.load(tmp_path / "broken.json")
