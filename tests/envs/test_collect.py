import numpy as np
import pytest

from mode_policy.cli import main
from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.envs.collect import collect_demonstrations
from mode_policy.envs.instructions import INSTRUCTIONS
from mode_policy.envs.metaworld import MAX_EPISODE_STEPS

pytest.importorskip("metaworld")


def test_collect_two_tasks_smoke(tmp_path):
    out = collect_demonstrations(
        tmp_path / "demos",
        suite="mt10",
        tasks="reach-v3,drawer-close",
        episodes_per_task=2,
        progress=False,
        frames_after_success=3,
    )
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 4 and ds.fps == 80 and ds.robot_type == "sawyer"
    assert ds.tasks == [INSTRUCTIONS["reach-v3"], INSTRUCTIONS["drawer-close-v3"]]
    assert ds.column("observation.state").shape == (ds.num_frames, 39)
    actions = ds.column("action")
    assert actions.shape == (ds.num_frames, 4) and np.abs(actions).max() <= 1.0
    assert all(4 <= ep["length"] < MAX_EPISODE_STEPS for ep in ds.episodes)
    assert [ep["tasks"][0] for ep in ds.episodes] == [ds.tasks[0]] * 2 + [ds.tasks[1]] * 2
    # The goal (last 3 state dims) is fixed within an episode and differs between episodes (seeded goals).
    goals = [ds.column("observation.state")[ds.episode_slice(i), 36:] for i in range(2)]
    assert np.ptp(goals[0], axis=0).max() == 0 and not np.allclose(goals[0][0], goals[1][0])


def test_collect_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(
            ["collect", "--suite", "mt10", "--tasks", "reach", "--episodes-per-task", "1", "--out", str(out)]
        )
        == 0
    )
    assert "wrote 1 episodes" in capsys.readouterr().out
    assert (
        main(["collect", "--tasks", "hammer", "--episodes-per-task", "1", "--out", str(tmp_path / "x")]) == 2
    )
    assert "valid tasks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
