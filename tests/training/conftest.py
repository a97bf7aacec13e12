import os

import pytest

TASKS = ["reach-v3", "drawer-close-v3"]
# A policy small enough that a training step takes milliseconds.
TINY_POLICY = ["language_encoder=onehot", "denoiser.width=32", "denoiser.depth=2", "denoiser.heads=2"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """2 MT10 tasks x 2 scripted-expert episodes as a LeRobotDataset v3 (~2 s)."""
    pytest.importorskip("metaworld")
    from mode_policy.envs.collect import collect_demonstrations

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return collect_demonstrations(
        tmp_path_factory.mktemp("data") / "demos", tasks=TASKS, episodes_per_task=2, progress=False
    )


def train_kwargs(**overrides):
    values = dict(
        steps=20, batch_size=16, seed=3, checkpoint_every=5, log_every=5, progress=False,
        policy_overrides=list(TINY_POLICY),
    )  # fmt: skip
    values.update(overrides)
    return values
