"""A run trained on a dataset mixture, used by the other jobs: inspect and distill read every dataset of
the mixture with the run's --rename/--drop; eval, serve, export and distill pick the dataset whose stats a
per-dataset policy normalises with (--inference-dataset)."""

import json

import numpy as np
import pytest
import torch

from mode_policy.cli import main
from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.data.windows import ActionChunkDataset
from mode_policy.distill.trainer import batch_source
from mode_policy.evaluation.inspect import _observations, inspect_policy
from mode_policy.keys import STATE_KEY
from mode_policy.policies import load_policy
from mode_policy.policies.folders import run_data
from mode_policy.policies.normalizer import Normalizer
from mode_policy.training.train import train
from tests.data.mixture_fixture import write_small_dataset
from tests.training.conftest import train_kwargs

CAMERA = "observation.images.wrist"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two datasets (the second with a camera the first lacks, dropped in training) and two runs on them:
    pooled stats with weights 3:1, and per-dataset stats (~10 s)."""
    root = tmp_path_factory.mktemp("mixture-runs")
    sim = write_small_dataset(root / "sim", ("reach", "push"), length=8)
    real = write_small_dataset(
        root / "real", ("pick", "push"), length=8, shift=4.0, scale=3.0, seed=1, camera="wrist"
    )
    common = dict(drop=[CAMERA], **train_kwargs(steps=4))
    pooled = train([sim, real], root / "pooled", dataset_weights=[3, 1], **common)
    per_dataset = train([sim, real], root / "per-dataset", normalization="per-dataset", **common)
    return {"sim": sim, "real": real, "pooled": pooled, "per_dataset": per_dataset}


def test_a_run_records_every_dataset_of_its_mixture(runs):
    data = run_data(runs["pooled"])
    assert data["datasets"] == [str(runs["sim"].resolve()), str(runs["real"].resolve())]
    assert data["dataset_weights"] == [0.75, 0.25] and data["drop"] == [CAMERA]
    assert data["normalization"] == "pooled"


def test_inspect_draws_from_every_dataset_with_its_own_stats(runs, tmp_path):
    # Without the run's --drop, opening the two datasets together is refused (a camera in one only).
    report = inspect_policy(runs["per_dataset"], tmp_path / "inspect")
    assert set(report["per_task"]) == {"reach", "push", "pick"}
    policy = load_policy(runs["per_dataset"], device="cpu")
    tasks, states = _observations(policy, runs["per_dataset"], None, frames_per_task=4, seed=0)
    real = LeRobotDataset(runs["real"])
    real_states = np.asarray(real.column(STATE_KEY))
    real_stats = Normalizer(real.stats, policy.normalizer.modes)
    pick = states[tasks.index("pick")][:, 0]  # "pick" is only in the second dataset: its stats apply
    raw = real_stats.unnormalize(STATE_KEY, pick).numpy()
    for row in raw:  # every frame is one of the second dataset's, recovered through its own stats
        assert np.abs(real_states - row).max(axis=1).min() < 1e-5
    push = states[tasks.index("push")]  # in both datasets: frames from each
    assert len(push) == 8


def test_distill_draws_a_pooled_mixture_with_its_weights(runs):
    teacher = load_policy(runs["pooled"], device="cpu")
    source = batch_source(None, runs["pooled"], teacher.config, need_actions=True, teacher=teacher)
    assert (
        str(runs["sim"].resolve()) in source.description and str(runs["real"].resolve()) in source.description
    )
    chunk = teacher.config.chunk_size
    windows = [len(ActionChunkDataset(LeRobotDataset(runs[name]), 1, chunk)) for name in ("sim", "real")]
    assert len(source.state) == sum(windows)
    shares = torch.tensor([source.row_weights[: windows[0]].sum(), source.row_weights[windows[0] :].sum()])
    torch.testing.assert_close(shares / shares.sum(), torch.tensor([0.75, 0.25], dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    _, tasks, _ = source.sample(4000, generator)
    assert abs(tasks.count("pick") / 4000 - 0.125) < 0.02  # half of the second dataset's windows are "pick"


def test_distill_of_a_per_dataset_teacher_uses_its_inference_dataset(runs):
    teacher = load_policy(runs["per_dataset"], device="cpu", inference_dataset="real")
    assert teacher.inference_dataset == "real"
    source = batch_source(None, runs["per_dataset"], teacher.config, need_actions=True, teacher=teacher)
    assert "real" in source.description and source.row_weights is None
    assert set(source.tasks) == {"pick", "push"}
    assert float(source.state.mean()) > 2  # the second dataset's states (shift 4), not the first's


def test_an_unknown_inference_dataset_is_one_line(runs, capsys):
    assert main(["eval", "--policy", str(runs["per_dataset"]), "--inference-dataset", "lab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset 'lab'" in err[0] and "sim" in err[0] and "real" in err[0]


def test_export_records_the_inference_dataset_and_its_file_cannot_change_it(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from mode_policy.runtime import export_onnx

    path = tmp_path / "real.onnx"
    export_onnx(runs["per_dataset"], path, inference_dataset="real")
    exported = load_policy(path)
    assert exported.inference_dataset == "real"
    torch_policy = load_policy(runs["per_dataset"], device="cpu", inference_dataset="real")
    obs = {STATE_KEY: torch.full((1, 3), 4.0), "task": ["pick"]}
    noise = torch.randn(1, *exported.noise_spec.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        exported.predict_action_chunk(obs, noise=noise),
        torch_policy.predict_action_chunk(obs, noise=noise),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="export the policy again with --inference-dataset sim"):
        load_policy(path, inference_dataset="sim")


def test_distill_and_inspect_a_mixture_run_from_the_command_line(runs, tmp_path, capsys):
    student = tmp_path / "student"
    argv = ["distill", "--teacher", str(runs["per_dataset"]), "--out", str(student), "--steps", "2",
            "--warm-start-steps", "2", "--inference-dataset", "real"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    settings = json.loads((student / "distill_config.json").read_text())
    assert settings["dataset"].startswith(str(runs["real"].resolve()))
    distilled = load_policy(student, device="cpu")
    teacher = load_policy(runs["per_dataset"], device="cpu", inference_dataset="real")
    assert distilled.dataset_stats == teacher.dataset_stats  # the student normalises with real's stats
    assert main(["inspect", str(runs["pooled"]), "--out", str(tmp_path / "usage")]) == 0
    assert set(json.loads((tmp_path / "usage" / "expert_usage.json").read_text())["per_task"]) == {
        "reach", "push", "pick"}  # fmt: skip
