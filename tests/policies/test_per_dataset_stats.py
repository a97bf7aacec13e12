"""Per-dataset normalisation: each training sample with its own dataset's stats, one chosen dataset's at
inference, both kept through save_pretrained / from_pretrained; types that cannot are refused."""

import json

import numpy as np
import pytest
import torch

from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.policies import MoDEPolicy, VDDPolicy, VDDPolicyConfig
from mode_policy.policies.base import NORMALIZER_PREFIXES
from mode_policy.policies.normalizer import Normalizer, PerDatasetStats
from tests.policies.common import make_batch, make_obs, tiny_config, tiny_stats


def shifted_stats(shift: float, scale: float) -> dict:
    stats = tiny_stats()
    return {
        feature: {name: shift + scale * np.asarray(value) if name != "std" else scale * np.asarray(value)
                  for name, value in values.items()}
        for feature, values in stats.items()
    }  # fmt: skip


A, B = tiny_stats(), shifted_stats(5.0, 3.0)


def per_dataset_policy(inference=None) -> MoDEPolicy:
    return MoDEPolicy(tiny_config(), PerDatasetStats({"sim": A, "real": B}, inference))


def same_weights_with(policy: MoDEPolicy, stats: dict) -> MoDEPolicy:
    """A one-stats policy with ``policy``'s network weights and ``stats``."""
    single = MoDEPolicy(policy.config, stats)
    weights = {k: v for k, v in policy.state_dict().items() if not k.startswith(NORMALIZER_PREFIXES)}
    single.load_state_dict(weights, strict=False)
    return single


def test_each_row_is_normalised_with_its_own_datasets_stats():
    policy = per_dataset_policy()
    batch = make_batch(policy.config, batch=4)
    batch["dataset_index"] = torch.tensor([0, 1, 1, 0])
    normalizer = policy.batch_normalizer(batch)
    modes = policy.normalizer.modes
    for feature in (STATE_KEY, ACTION_KEY):
        values = batch[feature]
        got = normalizer.normalize(feature, values)
        for row, stats in enumerate((A, B, B, A)):
            torch.testing.assert_close(got[row], Normalizer(stats, modes).normalize(feature, values[row]))
        torch.testing.assert_close(normalizer.unnormalize(feature, got), values)
    # Without dataset_index (a validation batch, inference) the inference dataset's stats apply.
    assert policy.batch_normalizer(make_batch(policy.config)) is policy.normalizer


def test_the_training_loss_uses_each_samples_own_stats():
    policy = per_dataset_policy()
    batch = make_batch(policy.config, batch=6)
    for index, stats in ((0, A), (1, B)):
        batch["dataset_index"] = torch.full((6,), index)
        loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))[0]
        single = same_weights_with(policy, stats)
        expected = single.compute_loss(batch, generator=torch.Generator().manual_seed(0))[0]
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    other = same_weights_with(policy, A).compute_loss(batch, generator=torch.Generator().manual_seed(0))[0]
    assert loss.item() != pytest.approx(other.item(), rel=1e-3)  # the stats do matter
    batch["dataset_index"] = torch.tensor([0, 1, 2, 0, 1, 0])
    with pytest.raises(ValueError, match=r"holds \[0, 1, 2\].*2 datasets"):
        policy.compute_loss(batch)


def test_per_dataset_stats_survive_save_and_load(tmp_path):
    policy = per_dataset_policy().eval()
    obs = make_obs(policy.config, batch=3)
    noise = torch.randn(3, policy.config.chunk_size, policy.config.action_dim)
    directory = policy.save_pretrained(tmp_path / "policy")
    saved = json.loads((directory / "stats.json").read_text())
    assert saved["normalization"] == "per-dataset" and saved["inference_dataset"] == "sim"
    assert list(saved["datasets"]) == ["sim", "real"]
    assert saved["datasets"]["real"]["action"]["max"] == pytest.approx(
        np.asarray(B["action"]["max"]).tolist()
    )

    loaded = MoDEPolicy.from_pretrained(directory)
    assert loaded.normalization == "per-dataset" and loaded.inference_dataset == "sim"
    assert loaded.per_dataset_stats == policy.per_dataset_stats
    for name, stats in (("sim", A), ("real", B)):
        if name == "real":
            loaded = MoDEPolicy.from_pretrained(directory, inference_dataset="real")
            assert (
                loaded.inference_dataset == "real"
                and loaded.dataset_stats == policy.per_dataset_stats["real"]
            )
        expected = same_weights_with(policy, stats).eval().predict_action_chunk(obs, noise=noise)
        torch.testing.assert_close(loaded.predict_action_chunk(obs, noise=noise), expected, rtol=0, atol=0)
    # The choice is saved with the policy.
    loaded.save_pretrained(tmp_path / "chosen")
    assert MoDEPolicy.from_pretrained(tmp_path / "chosen").inference_dataset == "real"
    with pytest.raises(ValueError, match=r"unknown dataset 'lab'.*\['sim', 'real'\]"):
        loaded.use_dataset_stats("lab")


def test_a_stats_file_that_disagrees_with_the_saved_buffers_is_refused(tmp_path):
    directory = per_dataset_policy().save_pretrained(tmp_path / "policy")
    values = json.loads((directory / "stats.json").read_text())
    values["datasets"]["real"]["action"]["max"] = [9.0, 9.0]
    (directory / "stats.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"disagrees with the normaliser saved.*dataset_normalizers"):
        MoDEPolicy.from_pretrained(directory)


def test_a_one_stats_policy_keeps_its_format_and_has_no_dataset_to_choose(tmp_path):
    policy = MoDEPolicy(tiny_config(), A)
    assert policy.normalization == "single" and not any(
        k.startswith("dataset_normalizers") for k in policy.state_dict()
    )
    directory = policy.save_pretrained(tmp_path / "policy")
    assert sorted(json.loads((directory / "stats.json").read_text())) == [ACTION_KEY, STATE_KEY]
    with pytest.raises(ValueError, match="one set of normalisation stats"):
        MoDEPolicy.from_pretrained(directory).use_dataset_stats("sim")


def test_a_policy_type_whose_loss_reads_one_set_of_stats_refuses_per_dataset_stats():
    config = VDDPolicyConfig(state_dim=5, action_dim=2, chunk_size=4, n_action_steps=2,
                             language_encoder="onehot", tasks=["a"])  # fmt: skip
    with pytest.raises(ValueError, match=r"cannot normalise each dataset.*--normalization pooled"):
        VDDPolicy(config, PerDatasetStats({"sim": A, "real": B}))
