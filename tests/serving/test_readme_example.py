"""The README's "Running on a robot" client runs as printed (against a local server, a fake robot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mode_policy.serving import PolicyServer
from tests.bad_inputs.fixtures import write_policy

README = Path(__file__).resolve().parents[2] / "README.md"


def robot_example() -> str:
    section = README.read_text().split("## Running on a robot", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


class FakeRobot:
    def __init__(self) -> None:
        self.applied = []

    def read_state(self) -> np.ndarray:
        return np.zeros(39, np.float32)

    def apply(self, action: np.ndarray) -> None:
        self.applied.append(action)


def test_the_readme_client_runs(tmp_path, monkeypatch):
    from mode_policy.policies import load_policy

    policy = load_policy(write_policy(tmp_path / "policy"), device="cpu")
    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.chdir(tmp_path)
    code = robot_example()
    assert "range(400)" in code and 'task="open the drawer"' in code
    robot = FakeRobot()
    with PolicyServer(policy, port=0, token="s3cret") as server:
        code = code.replace("ws://gpu-box:8765", server.url).replace("range(400)", "range(12)")
        code = code.replace('task="open the drawer"', f"task={policy.config.tasks[0]!r}")
        exec(compile(code, "README.md", "exec"), {"robot": robot, "print": lambda *a: None})
    assert len(robot.applied) == 12 and all(a.shape == (4,) for a in robot.applied)
