import numpy as np
import pytest

from mode_policy.envs.instructions import INSTRUCTIONS
from mode_policy.envs.metaworld import (
    MAX_EPISODE_STEPS,
    MT10_TASKS,
    MT50_TASKS,
    episode_seed,
    make_env,
    reset_with_seed,
    scripted_policy,
    suite_tasks,
)

metaworld = pytest.importorskip("metaworld")


def test_task_lists_match_installed_metaworld():
    from metaworld import env_dict

    assert list(MT10_TASKS) == list(env_dict.MT10_V3)
    assert list(MT50_TASKS) == list(env_dict.MT50_V3)
    assert len(MT50_TASKS) == 50 and set(MT10_TASKS) <= set(MT50_TASKS)


def test_instructions_cover_all_mt50_tasks_and_are_distinct():
    assert set(INSTRUCTIONS) == set(MT50_TASKS)
    assert all(text and text == text.strip() for text in INSTRUCTIONS.values())
    assert len(set(INSTRUCTIONS.values())) == 50


def test_suite_tasks_selects_and_validates():
    assert suite_tasks("mt10") == list(MT10_TASKS)
    assert suite_tasks("MT50", "reach,drawer-open-v3") == ["reach-v3", "drawer-open-v3"]
    with pytest.raises(ValueError, match="mt10"):
        suite_tasks("mt5")
    with pytest.raises(ValueError, match="reach-v3"):
        suite_tasks("mt10", ["hammer-v3"])  # an MT50 task outside MT10: the message lists the valid ones


def test_demo_and_eval_seeds_are_disjoint_and_deterministic():
    demo = {episode_seed(t, e, "demo", s) for t in MT50_TASKS for e in range(100) for s in (0, 1)}
    evals = {episode_seed(t, e, "eval", s) for t in MT50_TASKS for e in range(100) for s in (0, 1)}
    assert not demo & evals
    assert len(demo) == 50 * 100 * 2  # no collisions between tasks/episodes either
    assert episode_seed("reach-v3", 3) == episode_seed("reach-v3", 3, "demo", 0)
    assert all(0 <= s < 2**31 for s in demo)
    with pytest.raises(ValueError, match="split"):
        episode_seed("reach-v3", 0, "train")


def test_env_shapes_success_flag_and_reseeding():
    env = make_env("reach-v3", seed=episode_seed("reach-v3", 0))
    obs, _ = env.reset()
    assert obs.shape == (39,)
    assert env.action_space.shape == (4,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert env.max_path_length == MAX_EPISODE_STEPS
    # Reseeding an existing env reproduces a fresh env built with that seed (goal at obs[36:39]).
    seed = episode_seed("reach-v3", 5)
    fresh, _ = make_env("reach-v3", seed=seed).reset()
    again, _ = reset_with_seed(env, seed)
    np.testing.assert_array_equal(fresh, again)
    other, _ = reset_with_seed(env, episode_seed("reach-v3", 6))
    assert not np.allclose(other[36:], fresh[36:])

    policy = scripted_policy("reach-v3")
    obs = again
    for _ in range(MAX_EPISODE_STEPS):
        obs, _, terminated, _, info = env.step(np.clip(policy.get_action(obs), -1, 1))
        assert not terminated
        if info["success"]:
            break
    assert info["success"] == 1.0
