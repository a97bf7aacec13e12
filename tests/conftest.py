import contextlib

import pytest
import torch

from mode_policy import MoDEConfig, MoDEDenoiser

# Lightning binds its log handlers to the sys.stderr of the moment it is first imported. Imported inside a
# test that captures output (capsys), they would hold that test's stream, closed once it ends, and every
# later test's Lightning log line would print "--- Logging error ---" into its own output. Import it now.
with contextlib.suppress(ImportError):
    import lightning.pytorch  # noqa: F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides) -> MoDEConfig:
    values = dict(
        width=32, depth=2, heads=4, obs_dim=5, goal_dim=3, chunk_size=4, action_dim=2, goal_dropout=0.0
    )
    values.update(overrides)
    return MoDEConfig(**values)


def tiny_denoiser(dtype=torch.float64, **overrides) -> MoDEDenoiser:
    return MoDEDenoiser(tiny_config(**overrides)).to(dtype)


def random_inputs(config: MoDEConfig, batch: int, dtype=torch.float64):
    action = torch.randn(batch, config.chunk_size, config.action_dim, dtype=dtype)
    obs = torch.randn(batch, config.num_obs_tokens, config.obs_dim, dtype=dtype)
    goal = torch.randn(batch, config.num_goal_tokens, config.goal_dim, dtype=dtype)
    return action, obs, goal
