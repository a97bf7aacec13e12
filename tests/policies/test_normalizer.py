"""Normalizer: round trips, the conventions per mode, constant dimensions, errors and state_dict buffers."""

import numpy as np
import pytest
import torch

from mode_policy.policies import Normalizer

MODES = {"observation.state": "mean_std", "action": "min_max"}


def stats():
    return {
        "observation.state": {
            "mean": [1.0, -2.0, 0.5],
            "std": [2.0, 0.5, 0.0],
            "min": [0, 0, 0],
            "max": [1, 1, 1],
        },
        "action": {"min": np.array([-1.0, 0.0]), "max": np.array([1.0, 4.0]), "mean": [0, 0], "std": [1, 1]},
    }


def test_round_trip_and_conventions():
    normalizer = Normalizer(stats(), MODES)
    state = torch.randn(7, 2, 3)
    torch.testing.assert_close(
        normalizer.unnormalize("observation.state", normalizer.normalize("observation.state", state)), state
    )
    expected = (state[..., :2] - torch.tensor([1.0, -2.0])) / torch.tensor([2.0, 0.5])
    torch.testing.assert_close(normalizer.normalize("observation.state", state)[..., :2], expected)
    # min_max maps [min, max] onto [-1, 1].
    bounds = torch.tensor([[-1.0, 0.0], [1.0, 4.0], [0.0, 2.0]])
    torch.testing.assert_close(
        normalizer.normalize("action", bounds), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    )
    action = torch.randn(4, 10, 2, dtype=torch.float64)
    out = normalizer.unnormalize("action", normalizer.normalize("action", action))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, action)


def test_constant_dimensions_get_unit_scale_instead_of_exploding():
    values = stats()
    values["action"]["max"] = np.array([-1.0, 4.0])  # first action dimension never varies
    normalizer = Normalizer(values, MODES)
    state = torch.tensor([[0.0, 0.0, 0.7]])  # third state dimension has std 0
    assert normalizer.normalize("observation.state", state)[0, 2].item() == pytest.approx(0.2)
    action = torch.tensor([[-1.0, 4.0], [-0.9, 4.0]])
    normalized = normalizer.normalize("action", action)
    torch.testing.assert_close(normalized[:, 0], torch.tensor([0.0, 0.1]))
    torch.testing.assert_close(normalizer.unnormalize("action", normalized), action)


def test_identity_mode_and_unknown_feature():
    normalizer = Normalizer(stats(), {"observation.state": "identity", "action": "min_max"})
    x = torch.randn(3, 3)
    assert normalizer.normalize("observation.state", x) is x
    with pytest.raises(KeyError, match=r"no mode for 'observation.image'"):
        normalizer.normalize("observation.image", x)


def test_missing_stats_are_clear_errors():
    with pytest.raises(KeyError, match="no entry for 'action'"):
        Normalizer({"observation.state": stats()["observation.state"]}, MODES)
    partial = stats()
    del partial["action"]["min"]
    with pytest.raises(KeyError, match="lack 'min'"):
        Normalizer(partial, MODES)
    with pytest.raises(ValueError, match="expects 4"):
        Normalizer(stats(), MODES, shapes={"action": 4})
    with pytest.raises(ValueError, match="unknown normalization mode"):
        Normalizer(stats(), {"action": "zscore"})
    bad = stats()
    bad["action"]["max"] = [float("nan"), 1.0]
    with pytest.raises(ValueError, match="NaN"):
        Normalizer(bad, MODES)


def test_buffers_save_in_state_dict_and_unloaded_stats_fail_clearly():
    source = Normalizer(stats(), MODES)
    assert set(source.state_dict()) == {
        "features.observation__state.offset",
        "features.observation__state.scale",
        "features.action.offset",
        "features.action.scale",
    }
    empty = Normalizer(None, MODES, shapes={"observation.state": 3, "action": 2})
    with pytest.raises(RuntimeError, match="no statistics for 'action'"):
        empty.normalize("action", torch.zeros(1, 2))
    empty.load_state_dict(source.state_dict())
    x = torch.randn(5, 2)
    torch.testing.assert_close(empty.normalize("action", x), source.normalize("action", x))
    with pytest.raises(ValueError, match="needs shapes"):
        Normalizer(None, MODES)
