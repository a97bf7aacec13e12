"""Training on a dataset mixture end to end: merged tasks, pooled or per-dataset stats, exact resume."""

import json

import numpy as np
import pytest
import torch

from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.data.stats import merge_stats
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.policies import load_policy
from mode_policy.training.train import train
from tests.data.mixture_fixture import write_small_dataset
from tests.training.conftest import train_kwargs
from tests.training.test_train import Interrupted, RecordLosses, _states_equal


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two small datasets with one shared instruction and clearly different stats (~1 s)."""
    root = tmp_path_factory.mktemp("mixture")
    a = write_small_dataset(root / "sim", ("reach", "push"), length=8)
    b = write_small_dataset(root / "real", ("pick", "push"), length=8, shift=2.0, scale=3.0, seed=1)
    return a, b


def test_a_pooled_mixture_trains_on_the_merged_tasks_and_pooled_stats(datasets, tmp_path):
    run = train(list(datasets), tmp_path / "run", dataset_weights=[3, 1], **train_kwargs(steps=4))
    settings = json.loads((run / "train_config.json").read_text())
    assert (
        settings["datasets"] == [str(d.resolve()) for d in datasets]
        and settings["dataset"] == settings["datasets"][0]
    )
    assert settings["dataset_weights"] == [0.75, 0.25] and settings["normalization"] == "pooled"
    policy = load_policy(run, device="cpu")
    assert policy.config.tasks == ["reach", "push", "pick"]
    assert policy.normalization == "single"
    parts = [LeRobotDataset(d).stats for d in datasets]
    for feature in (STATE_KEY, ACTION_KEY):
        expected = merge_stats([part[feature] for part in parts], [0.75, 0.25])
        for name in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(policy.dataset_stats[feature][name], expected[name], rtol=1e-12)


def test_a_resumed_per_dataset_mixture_run_matches_an_uninterrupted_one(datasets, tmp_path):
    mixture = dict(dataset_weights=[0.6, 0.4], normalization="per-dataset", **train_kwargs(steps=12))
    straight = RecordLosses()
    train(list(datasets), tmp_path / "a", extra_callbacks=[straight], **mixture)
    crashed = RecordLosses(stop_at=7)  # last checkpoint at step 5: steps 6-7 are redone
    with pytest.raises(Interrupted):
        train(list(datasets), tmp_path / "b", extra_callbacks=[crashed], **mixture)
    resumed = RecordLosses()
    train(list(datasets), tmp_path / "b", resume=True, extra_callbacks=[resumed], progress=False)
    assert sorted(resumed.losses) == list(range(6, 13))
    assert all(resumed.losses[s] == straight.losses[s] for s in resumed.losses)  # bitwise
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    assert _states_equal(a["state_dict"], b["state_dict"])
    assert _states_equal(a["current_model_state"], b["current_model_state"])
    # The exported policy holds both datasets' stats and normalises with the first one's at inference.
    policy = load_policy(tmp_path / "b", device="cpu")
    assert policy.normalization == "per-dataset" and policy.inference_dataset == "sim"
    own = LeRobotDataset(datasets[1]).stats[ACTION_KEY]["max"]
    assert policy.per_dataset_stats["real"][ACTION_KEY]["max"] == pytest.approx(np.asarray(own).tolist())


def test_resume_refuses_another_dataset_list_or_other_weights(datasets, tmp_path):
    train(list(datasets), tmp_path / "run", dataset_weights=[1, 1], **train_kwargs(steps=2))
    with pytest.raises(ValueError, match="same --dataset list, in the same order") as error:
        train(list(reversed(datasets)), tmp_path / "run", resume=True, steps=4, progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="same --dataset list"):
        train(datasets[0], tmp_path / "run", resume=True, steps=4, progress=False)
    with pytest.raises(ValueError, match="dataset_weights: run has"):
        train(list(datasets), tmp_path / "run", resume=True, steps=4, dataset_weights=[1, 2], progress=False)
    with pytest.raises(ValueError, match="normalization"):
        train(
            list(datasets),
            tmp_path / "run",
            resume=True,
            steps=4,
            normalization="per-dataset",
            progress=False,
        )
    # Equal weights at another scale are the same weights.
    train(list(datasets), tmp_path / "run", resume=True, steps=3, dataset_weights=[5, 5], progress=False)


def test_the_command_line_takes_repeated_datasets_and_weights(datasets, tmp_path, capsys):
    from mode_policy.cli import main

    policy = [item for value in train_kwargs()["policy_overrides"] for item in ("--set", value)]
    argv = ["train", "--dataset", str(datasets[0]), "--dataset", str(datasets[1]), "--dataset-weights",
            "0.7,0.3", "--normalization", "per-dataset", "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "4", *policy]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (
        settings["dataset_weights"] == pytest.approx([0.7, 0.3])
        and settings["normalization"] == "per-dataset"
    )
