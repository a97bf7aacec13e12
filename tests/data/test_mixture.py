"""Dataset mixtures: merged tasks, global indices, pooled stats, feature checks, rename and drop."""

import numpy as np
import pytest
import torch

from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.data.mixture import (
    DatasetMixture,
    DatasetView,
    MixtureDataset,
    dataset_names,
    key_map,
    merge_tasks,
    with_keys,
)
from mode_policy.data.stats import merge_stats
from mode_policy.data.windows import ActionChunkDataset
from mode_policy.keys import ACTION_KEY, STATE_KEY
from tests.data.mixture_fixture import write_small_dataset

TOP, WRIST, GRIPPER = "observation.images.top", "observation.images.wrist", "observation.images.gripper"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two datasets sharing one instruction: A (12 frames x 2 tasks), B (3 tasks, other stats)."""
    root = tmp_path_factory.mktemp("mix")
    a = write_small_dataset(root / "a", ("reach", "push"), episodes_per_task=1)
    b = write_small_dataset(root / "b", ("pick", "push", "open"), episodes_per_task=1, shift=3.0, scale=2.0)
    return LeRobotDataset(a), LeRobotDataset(b)


def test_tasks_merge_in_order_of_first_appearance():
    tasks, maps = merge_tasks([["reach", "push"], ["pick", "push", "open"], ["open"]])
    assert tasks == ["reach", "push", "pick", "open"]
    assert [m.tolist() for m in maps] == [[0, 1], [2, 1, 3], [3]]


def test_items_carry_their_dataset_and_the_merged_task_index(pair):
    mixture = DatasetMixture(pair)
    assert mixture.tasks == ["reach", "push", "pick", "open"] and mixture.names == ["a", "b"]
    parts = [ActionChunkDataset(d, n_obs_steps=2, chunk_size=3) for d in pair]
    items = MixtureDataset(parts, mixture)
    assert len(items) == len(parts[0]) + len(parts[1]) and items.sizes.tolist() == [12, 18]
    for index in (0, 11, 12, 29, -1):
        dataset, local = items.locate(index)
        assert (dataset, local) == ((0, index) if 0 <= index < 12 else (1, (index % 30) - 12))
        item, own = items[index], parts[dataset][local]
        assert item["dataset_index"].dtype == torch.int64 and item["dataset_index"].item() == dataset
        assert mixture.tasks[item["task_index"].item()] == item["task"] == own["task"]
        for key in (STATE_KEY, ACTION_KEY, "action_is_pad", "episode_index", "frame_index"):
            assert torch.equal(item[key], own[key])
    # B's "push" (its task 1) is the merged vocabulary's task 1, its "open" (task 2) task 3.
    opens = [items[12 + i] for i in range(18) if items[12 + i]["task"] == "open"]
    assert opens and all(item["task_index"].item() == 3 for item in opens)
    with pytest.raises(IndexError):
        items[30]


def test_pooled_stats_are_merge_stats_weighted_by_the_mixture_weights(pair):
    mixture = DatasetMixture(pair, weights=[3, 1])
    assert mixture.weights.tolist() == [0.75, 0.25]
    for feature in (STATE_KEY, ACTION_KEY):
        expected = merge_stats([pair[0].stats[feature], pair[1].stats[feature]], [0.75, 0.25])
        assert mixture.stats[feature].keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(mixture.stats[feature][name], value)
    # min/max of the union; the mean weighted by 3:1, not by frames (12:18)
    state = [d.stats[STATE_KEY] for d in pair]
    np.testing.assert_allclose(mixture.stats[STATE_KEY]["max"], np.maximum(state[0]["max"], state[1]["max"]))
    np.testing.assert_allclose(
        mixture.stats[STATE_KEY]["mean"], 0.75 * state[0]["mean"] + 0.25 * state[1]["mean"], rtol=1e-12
    )
    # By default each dataset weighs its share of the frames.
    assert DatasetMixture(pair).weights.tolist() == pytest.approx([12 / 30, 18 / 30])
    assert DatasetMixture(pair).dataset_stats == {"a": pair[0].stats, "b": pair[1].stats}


def test_another_fps_is_refused_naming_both_datasets(pair, tmp_path):
    other = LeRobotDataset(write_small_dataset(tmp_path / "fast", fps=20))
    with pytest.raises(ValueError, match="fps") as error:
        DatasetMixture([pair[0], other])
    assert str(pair[0].root) in str(error.value) and str(other.root) in str(error.value)


def test_another_feature_shape_is_refused_naming_both_datasets_and_the_field(pair, tmp_path):
    other = LeRobotDataset(write_small_dataset(tmp_path / "wide", state_dim=4))
    with pytest.raises(ValueError, match=r"shape of 'observation.state': \[3\] vs \[4\]") as error:
        DatasetMixture([pair[0], other])
    assert str(pair[0].root) in str(error.value) and str(other.root) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_camera_in_one_dataset_only_is_refused_unless_dropped_or_renamed(pair, tmp_path):
    top = LeRobotDataset(write_small_dataset(tmp_path / "top", camera="top"))
    with pytest.raises(
        ValueError, match=rf"'{TOP}' is in the dataset at .*top but not in .*a:.*--drop {TOP}"
    ):
        DatasetMixture([pair[0], top])
    mixture = DatasetMixture(with_keys([pair[0], top], drop=[TOP]))
    assert TOP not in mixture.features and mixture.camera_keys == []
    # Two cameras of the same view under different names: one rename makes them one feature.
    wrist = LeRobotDataset(write_small_dataset(tmp_path / "wrist", camera="wrist", seed=1))
    gripper = LeRobotDataset(write_small_dataset(tmp_path / "gripper", camera="gripper", seed=2))
    with pytest.raises(ValueError, match="--rename"):
        DatasetMixture([wrist, gripper])
    views = with_keys([wrist, gripper], rename=[f"{WRIST}={GRIPPER}"])
    mixture = DatasetMixture(views)
    assert mixture.camera_keys == [GRIPPER]
    np.testing.assert_array_equal(views[0].images(GRIPPER), wrist.images(WRIST))
    items = MixtureDataset([ActionChunkDataset(v, image_keys=[GRIPPER]) for v in views], mixture)
    assert items[0][GRIPPER].shape == (1, 3, 8, 8) and items[len(items) - 1][GRIPPER].dtype == torch.uint8


def test_a_view_renames_and_drops_features_columns_and_stats(pair):
    dataset = pair[0]
    view = DatasetView(dataset, rename={STATE_KEY: "observation.joints"}, drop=[ACTION_KEY])
    assert "observation.joints" in view.features and STATE_KEY not in view.features
    assert ACTION_KEY not in view.features and ACTION_KEY not in view.stats
    np.testing.assert_array_equal(view.column("observation.joints"), dataset.column(STATE_KEY))
    assert view.stats["observation.joints"] is dataset.stats[STATE_KEY]
    assert (view.root, view.fps, view.tasks, view.num_frames) == (
        dataset.root,
        dataset.fps,
        dataset.tasks,
        dataset.num_frames,
    )
    with pytest.raises(KeyError, match=r"observation\.state"):
        view.column(STATE_KEY)


def test_bad_renames_and_drops_are_one_clear_line(pair):
    with pytest.raises(ValueError, match=r"--rename observation\.images\.nope: no dataset has"):
        with_keys(pair, rename={"observation.images.nope": GRIPPER})
    with pytest.raises(ValueError, match=r"--drop observation\.velocity: no dataset has"):
        with_keys(pair, drop=["observation.velocity"])
    with pytest.raises(ValueError, match="index columns"):
        with_keys(pair, drop=["task_index"])
    with pytest.raises(ValueError, match="already has 'action'"):
        with_keys(pair, rename={STATE_KEY: ACTION_KEY})
    with pytest.raises(ValueError, match="old=new"):
        key_map(["observation.state"])
    with pytest.raises(ValueError, match="both renamed"):
        with_keys(pair, rename={STATE_KEY: "x"}, drop=[STATE_KEY])


def test_bad_weights_are_refused_before_anything_is_mixed(pair):
    with pytest.raises(ValueError, match=r"3 number\(s\) but 2 dataset"):
        DatasetMixture(pair, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="all 0"):
        DatasetMixture(pair, weights=[0, 0])


def test_dataset_names_are_folder_names_made_unique():
    assert dataset_names(["x/data", "y/data", "z/other", "w/data"]) == ["data", "data-2", "other", "data-3"]
