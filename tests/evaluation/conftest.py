import numpy as np
import pytest

TASKS = ["reach-v3", "drawer-close-v3"]


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """An untrained, tiny MoDE policy saved with save_pretrained (evaluation needs no training)."""
    pytest.importorskip("metaworld")
    import torch

    from mode_policy.envs.metaworld import instruction
    from mode_policy.policies.mode.configuration import MoDEPolicyConfig
    from mode_policy.policies.mode.modeling import MoDEPolicy

    torch.manual_seed(0)
    config = MoDEPolicyConfig.from_dict({
        "language_encoder": "onehot",
        "tasks": [instruction(t) for t in TASKS],
        "denoiser": {"width": 32, "depth": 2, "heads": 2, "num_experts": 4, "top_k": 2},
    })  # fmt: skip
    stats = {
        "observation.state": {
            "mean": np.zeros(39),
            "std": np.ones(39),
            "min": -np.ones(39),
            "max": np.ones(39),
        },
        "action": {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)},
    }
    return MoDEPolicy(config, stats).save_pretrained(tmp_path_factory.mktemp("policy") / "tiny")
