"""Distilling a tiny untrained MoDE policy end to end (run -> distill -> save -> load -> predict); errors."""

import json

import numpy as np
import pytest
import torch

from mode_policy.cli import main
from mode_policy.data.lerobot import LeRobotDatasetWriter
from mode_policy.distill import TeacherError, VDDPolicy, distill, load_teacher
from mode_policy.policies import MoDEPolicy
from mode_policy.policies.registry import load_policy_and_run
from tests.policies.common import ACTION_DIM, STATE_DIM, TASKS, tiny_config

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": None},
    "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny synthetic LeRobot dataset and an untrained tiny MoDE policy saved as a training run."""
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    with LeRobotDatasetWriter(root / "data", fps=10, features=FEATURES) as writer:
        for episode in range(6):
            for _ in range(8):
                writer.add_frame({
                    "observation.state": rng.normal(size=STATE_DIM).astype(np.float32),
                    "action": rng.uniform(-1, 1, size=ACTION_DIM).astype(np.float32),
                })  # fmt: skip
            writer.save_episode(task=TASKS[episode % len(TASKS)])
    from mode_policy.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(root / "data")
    torch.manual_seed(0)
    teacher = MoDEPolicy(tiny_config(tasks=list(dataset.tasks)), dataset.stats)
    run = root / "run"
    teacher.save_pretrained(run / "policy")
    (run / "train_config.json").write_text(json.dumps({"dataset": str((root / "data").resolve())}))
    return run


def test_distill_a_mode_run_then_load_and_predict(teacher_run, tmp_path):
    result = distill(teacher_run, out=tmp_path / "student", experts=3, steps=4, batch_size=8, log_every=2,
                     warm_start_steps=3, progress=False)  # fmt: skip
    out = tmp_path / "student"
    for name in ("policy/config.json", "policy/model.safetensors", "policy/stats.json", "metrics.csv",
                 "distill_curve.png", "distill_config.json", "distill_summary.json",
                 "warm_start.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    settings = json.loads((out / "distill_config.json").read_text())
    assert settings["dataset"].endswith("data") and settings["experts"] == 3  # from RUN/train_config.json
    teacher, _ = load_teacher(teacher_run)
    student = VDDPolicy.from_pretrained(out / "policy")
    assert student.config.tasks == teacher.config.tasks and student.config.n_action_steps == 2
    for key, value in teacher.normalizer.state_dict().items():  # the teacher's normalisation, saved
        assert torch.equal(student.normalizer.state_dict()[key], value), key
    obs = {"observation.state": torch.randn(2, STATE_DIM), "task": [TASKS[0], TASKS[1]]}
    chunk = student.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, 4, ACTION_DIM) and torch.isfinite(chunk).all()
    again = result.student.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chunk, again)
    assert isinstance(load_policy_and_run(out, device="cpu")[0], VDDPolicy)  # what `mode-policy eval` does


def test_cli_distill(teacher_run, tmp_path, capsys):
    code = main(["distill", "--teacher", str(teacher_run), "--experts", "2", "--out", str(tmp_path / "s"),
                 "--steps", "2", "--batch-size", "4", "--covariance", "diagonal",
                 "--warm-start-steps", "2"])  # fmt: skip
    assert code == 0 and "VDD student (2 experts)" in capsys.readouterr().out
    # A student is not a teacher; the refusal names the fix.
    code = main(["distill", "--teacher", str(tmp_path / "s"), "--out", str(tmp_path / "t"), "--steps", "1"])
    assert code == 2 and "pass the MoDE run it was distilled from" in capsys.readouterr().err


def test_bad_teachers_are_refused_with_the_fix(teacher_run, tmp_path):
    with pytest.raises(TeacherError, match="neither a training run"):
        load_teacher(tmp_path)  # an empty folder
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"policy_type": "act", "chunk_size": 10}))
    with pytest.raises(TeacherError, match="not a MoDE diffusion policy"):
        load_teacher(foreign)
    student = VDDPolicy.from_teacher(load_teacher(teacher_run)[0])
    with pytest.raises(TeacherError, match="VDD student"):
        distill(student, steps=1, progress=False)
    # A student built for other tasks (another encoder) does not read what the teacher reads.
    teacher, _ = load_teacher(teacher_run)
    wrong = VDDPolicy.from_teacher(MoDEPolicy(tiny_config(tasks=["other task"]), teacher.dataset_stats))
    with pytest.raises(TeacherError, match="tasks: student"):
        distill(teacher_run, student=wrong, steps=1, progress=False)
    with pytest.raises(ValueError, match="pass the teacher's training dataset"):
        distill(teacher, steps=1, progress=False)  # a policy object has no run to take the dataset from
