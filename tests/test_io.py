"""mode_policy.io: the state-dict comparison behind every 'these weights do not fit' message."""

import torch

from mode_policy.io import state_dict_mismatch


def test_state_dict_mismatch_names_missing_unexpected_and_resized_tensors():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    assert state_dict_mismatch(expected, {"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(1)}) == ""
    loaded = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    want = "missing ['c'] (1); unexpected ['d'] (1); resized ['b'] (1)"
    assert state_dict_mismatch(expected, loaded) == want
    many = {f"w{i}": torch.zeros(1) for i in range(6)}
    assert state_dict_mismatch(many, {}, show=2) == "missing ['w0', 'w1'] ... (6)"
