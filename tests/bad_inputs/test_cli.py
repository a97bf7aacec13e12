"""Bad input at the command line: every case exits with code 2 and one line that names the file or field.

Each case builds its damage in a fresh folder (copies of small valid inputs from ``fixtures``), runs
``mode-policy ...`` in this process and checks: exit code 2, exactly one ``error:`` line, the expected
file or field named in it, no traceback, and (where the case is about data loss) that nothing the user
owned changed. A few cases also run as a real subprocess (``test_cli_subprocess``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mode_policy.keys import ACTION_KEY, STATE_KEY
from tests.bad_inputs.fixtures import (
    DATA_FILE,
    EPISODES_FILE,
    TINY_POLICY,
    copy,
    edit_json,
    edit_parquet,
    truncate,
    write_dataset,
    write_policy,
)

TRAIN = ["train", "--steps", "2", "--batch-size", "4", *TINY_POLICY]
CASES: list[Callable] = []


def case(make: Callable) -> Callable:
    """Register ``make(tmp, fx) -> Case`` as one row of the table."""
    CASES.append(make)
    return make


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The valid inputs every case starts from (built once for the module, ~10 s)."""
    from mode_policy.training.train import train

    root = tmp_path_factory.mktemp("valid")
    inputs = Inputs(
        dataset=write_dataset(root / "dataset"),
        policy=write_policy(root / "policy"),
        dense_policy=write_policy(root / "dense", num_experts=1),
        image32=write_dataset(root / "image32", camera="corner", image_size=32, episodes_per_task=1),
        video=write_dataset(root / "video", camera="corner", image_format="video", episodes_per_task=1),
        no_action=write_dataset(root / "no_action", with_action=False, episodes_per_task=1),
        run=root / "run",
        exported=root / "policy.onnx",
    )
    train(inputs.dataset, inputs.run, steps=2, batch_size=4, checkpoint_every=1, progress=False,
          policy_overrides=[v for v in TINY_POLICY if v != "--set"])  # fmt: skip
    from mode_policy.runtime import export_onnx

    export_onnx(inputs.policy, inputs.exported)
    return inputs


@dataclass
class Inputs:
    dataset: Path
    policy: Path
    dense_policy: Path
    image32: Path
    video: Path
    no_action: Path
    run: Path
    exported: Path  # fx.policy exported to ONNX


@dataclass
class Case:
    argv: list[str]
    needle: str  # must appear in the error line (the file or field at fault)
    check: Callable[[], None] | None = None  # e.g. nothing the user owned was touched


def _same_file(path: Path, content: bytes) -> Callable[[], None]:
    def check() -> None:
        assert path.read_bytes() == content, f"{path} was changed"

    return check


def _user_file(tmp: Path, name: str = "thesis.txt") -> tuple[Path, Callable[[], None]]:
    path = tmp / name
    path.write_bytes(b"three years of work")
    return path, _same_file(path, b"three years of work")


def _data(tmp: Path, fx: Inputs) -> Path:
    return copy(fx.dataset, tmp / "data")


def _policy(tmp: Path, fx: Inputs) -> Path:
    return copy(fx.policy, tmp / "policy")


def _train(data: Path, tmp: Path, *extra: str) -> list[str]:
    return [*TRAIN, "--dataset", str(data), "--out", str(tmp / "run"), *extra]


def _eval(policy: Path, *extra: str) -> list[str]:
    return ["eval", "--policy", str(policy), "--tasks", "reach", "--episodes-per-task", "1", *extra]


# collect ------------------------------------------------------------------------------------------------
@case
def collect_overwrite_foreign_folder(tmp, fx):
    out = tmp / "mine"
    out.mkdir()
    _, check = _user_file(out)
    argv = ["collect", "--tasks", "reach", "--episodes-per-task", "1", "--out", str(out), "--overwrite"]
    return Case(argv, "not a LeRobot dataset", check)


@case
def collect_out_is_file(tmp, fx):
    path, check = _user_file(tmp)
    return Case(["collect", "--tasks", "reach", "--out", str(path), "--overwrite"], "existing file", check)


@case
def collect_existing_dataset(tmp, fx):
    return Case(["collect", "--tasks", "reach", "--out", str(_data(tmp, fx))], "--overwrite")


@case
def collect_image_size_zero(tmp, fx):
    argv = [
        "collect",
        "--tasks",
        "reach",
        "--cameras",
        "corner",
        "--image-size",
        "0",
        "--out",
        str(tmp / "o"),
    ]
    return Case(argv, "--image-size")


@case
def collect_episodes_zero(tmp, fx):
    return Case(["collect", "--episodes-per-task", "0", "--out", str(tmp / "o")], "episodes_per_task")


@case
def collect_unknown_task(tmp, fx):
    return Case(["collect", "--tasks", "fly-to-the-moon", "--out", str(tmp / "o")], "unknown task")


@case
def collect_unknown_camera(tmp, fx):
    return Case(["collect", "--cameras", "nose", "--out", str(tmp / "o")], "unknown Meta-World camera")


@case
def collect_unknown_suite(tmp, fx):
    return Case(["collect", "--suite", "mt99", "--out", str(tmp / "o")], "--suite")


@case
def collect_episodes_not_a_number(tmp, fx):
    return Case(["collect", "--episodes-per-task", "many", "--out", str(tmp / "o")], "--episodes-per-task")


# train: the dataset ---------------------------------------------------------------------------------------
@case
def train_dataset_missing(tmp, fx):
    return Case(_train(tmp / "nowhere", tmp), "no such dataset folder")


@case
def train_info_missing(tmp, fx):
    data = _data(tmp, fx)
    (data / "meta/info.json").unlink()
    return Case(_train(data, tmp), "meta/info.json")


@case
def train_info_not_json(tmp, fx):
    data = _data(tmp, fx)
    (data / "meta/info.json").write_text('{"fps": 80,')
    return Case(_train(data, tmp), "meta/info.json")


@case
def train_info_not_utf8(tmp, fx):
    data = _data(tmp, fx)
    (data / "meta/info.json").write_bytes(b'{"fps": \xff\xfe}')
    return Case(_train(data, tmp), "meta/info.json")


@case
def train_info_fps_text(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info.update(fps="fast"))
    return Case(_train(data, tmp), "'fps'")


@case
def train_info_old_version(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info.update(codebase_version="v2.1"))
    return Case(_train(data, tmp), "codebase_version")


@case
def train_info_bad_shape(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info["features"][ACTION_KEY].update(shape="4"))
    return Case(_train(data, tmp), "shape")


@case
def train_info_unknown_dtype(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info["features"][ACTION_KEY].update(dtype="float99"))
    return Case(_train(data, tmp), "dtype")


@case
def train_info_wrong_total(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info.update(total_frames=7))
    return Case(_train(data, tmp), "total_frames")


@case
def train_info_width_mismatch(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info["features"][ACTION_KEY].update(shape=[5]))
    return Case(_train(data, tmp), "'action'")


@case
def train_tasks_missing(tmp, fx):
    data = _data(tmp, fx)
    (data / "meta/tasks.parquet").unlink()
    return Case(_train(data, tmp), "tasks.parquet")


@case
def train_tasks_empty_file(tmp, fx):
    data = _data(tmp, fx)
    (data / "meta/tasks.parquet").write_bytes(b"")
    return Case(_train(data, tmp), "tasks.parquet")


@case
def train_episodes_truncated(tmp, fx):
    data = _data(tmp, fx)
    truncate(data / EPISODES_FILE)
    return Case(_train(data, tmp), EPISODES_FILE)


@case
def train_episodes_empty_file(tmp, fx):
    data = _data(tmp, fx)
    (data / EPISODES_FILE).write_bytes(b"")
    return Case(_train(data, tmp), EPISODES_FILE)


@case
def train_episodes_missing(tmp, fx):
    data = _data(tmp, fx)
    (data / EPISODES_FILE).unlink()
    return Case(_train(data, tmp), "meta/episodes")


@case
def train_episode_length_wrong(tmp, fx):
    data = _data(tmp, fx)
    edit_parquet(data / EPISODES_FILE, "length", lambda v: v + 1)
    return Case(_train(data, tmp), "length")


@case
def train_data_truncated(tmp, fx):
    data = _data(tmp, fx)
    truncate(data / DATA_FILE)
    return Case(_train(data, tmp), DATA_FILE)


@case
def train_data_empty_file(tmp, fx):
    data = _data(tmp, fx)
    (data / DATA_FILE).write_bytes(b"")
    return Case(_train(data, tmp), DATA_FILE)


@case
def train_data_missing(tmp, fx):
    data = _data(tmp, fx)
    (data / DATA_FILE).unlink()
    return Case(_train(data, tmp), "no data files")


@case
def train_data_nan_state(tmp, fx):
    data = _data(tmp, fx)

    def poison(values):
        values[3, 5] = np.nan
        return values

    edit_parquet(data / DATA_FILE, STATE_KEY, poison)
    return Case(_train(data, tmp), "NaN")


@case
def train_data_episode_index_shuffled(tmp, fx):
    data = _data(tmp, fx)
    edit_parquet(data / DATA_FILE, "episode_index", lambda v: v[::-1])
    return Case(_train(data, tmp), "episode_index")


@case
def train_stats_missing_key(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/stats.json", lambda stats: stats[ACTION_KEY].pop("min"))
    return Case(_train(data, tmp), "'min'")


@case
def train_stats_not_json(tmp, fx):
    data = _data(tmp, fx)
    (data / "meta/stats.json").write_text("{not json")
    return Case(_train(data, tmp), "meta/stats.json")


@case
def train_stats_narrow_range(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/stats.json", lambda stats: stats[ACTION_KEY].update(max=[0.5] * 4))
    return Case(_train(data, tmp), "'max'")


@case
def train_stats_zero_std(tmp, fx):
    data = _data(tmp, fx)

    def zero(stats):
        stats[STATE_KEY]["std"][0] = 0.0

    edit_json(data / "meta/stats.json", zero)
    return Case(_train(data, tmp), "'std'")


@case
def train_stats_wrong_width(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/stats.json", lambda stats: stats[ACTION_KEY].update(mean=[0.0] * 3))
    return Case(_train(data, tmp), "meta/stats.json")


@case
def train_dataset_without_actions(tmp, fx):
    return Case(_train(fx.no_action, tmp), "'action'")


# train: the output, resuming, settings -------------------------------------------------------------------
@case
def train_out_is_file(tmp, fx):
    path, check = _user_file(tmp)
    return Case([*TRAIN, "--dataset", str(fx.dataset), "--out", str(path)], "--out", check)


@case
def train_out_foreign_folder(tmp, fx):
    out = tmp / "home"
    out.mkdir()
    _, check = _user_file(out)
    return Case([*TRAIN, "--dataset", str(fx.dataset), "--out", str(out)], "other files", check)


@case
def train_out_holds_a_run(tmp, fx):
    run = copy(fx.run, tmp / "run")
    return Case([*TRAIN, "--dataset", str(fx.dataset), "--out", str(run)], "--resume")


@case
def train_resume_nothing(tmp, fx):
    return Case([*_train(fx.dataset, tmp), "--resume"], "cannot resume")


def _resume(tmp, fx, damage) -> Case:
    run = copy(fx.run, tmp / "run")
    damage(run / "checkpoints" / "last.ckpt")
    argv = ["train", "--dataset", str(fx.dataset), "--out", str(run), "--resume", "--steps", "4"]
    return Case(argv, "last.ckpt")


@case
def train_resume_checkpoint_truncated(tmp, fx):
    return _resume(tmp, fx, truncate)


@case
def train_resume_checkpoint_empty(tmp, fx):
    return _resume(tmp, fx, lambda path: path.write_bytes(b""))


@case
def train_resume_checkpoint_random_bytes(tmp, fx):
    return _resume(tmp, fx, lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)))


@case
def train_resume_settings_corrupt(tmp, fx):
    run = copy(fx.run, tmp / "run")
    (run / "train_config.json").write_text('{"dataset": "x"}')
    argv = ["train", "--dataset", str(fx.dataset), "--out", str(run), "--resume", "--steps", "4"]
    return Case(argv, "train_config.json")


@case
def train_resume_other_batch_size(tmp, fx):
    run = copy(fx.run, tmp / "run")
    argv = ["train", "--dataset", str(fx.dataset), "--out", str(run), "--resume", "--batch-size", "8"]
    return Case(argv, "batch_size")


@case
def train_set_unknown_key(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--set", "denoiser.wdth=64"), "denoiser.wdth")


@case
def train_set_bad_value(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--set", "denoiser.width=-1"), "width")


@case
def train_set_wrong_type(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--set", "denoiser.dropout=lots"), "dropout")


@case
def train_set_without_equals(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--set", "width"), "key=value")


@case
def train_set_unknown_denoiser_kind(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--set", "denoiser.kind=lstm"), "denoiser.kind")


@case
def train_steps_zero(tmp, fx):
    return Case([*_train(fx.dataset, tmp), "--steps", "0"], "steps")


@case
def train_negative_lr(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--lr", "-1"), "--lr")


@case
def train_diverges_before_any_checkpoint(tmp, fx):
    argv = [*_train(fx.dataset, tmp, "--lr", "1e4"), "--steps", "40", "--checkpoint-every", "1000"]
    return Case(argv, "no checkpoint was written")


@case
def train_router_sees_nan(tmp, fx):
    argv = [*_train(fx.dataset, tmp, "--lr", "1e12"), "--steps", "40", "--checkpoint-every", "1000"]
    return Case(argv, "diverged")


@case
def train_images_too_small(tmp, fx):
    argv = _train(fx.image32, tmp, "--set", 'image_keys=["observation.images.corner"]')
    return Case(argv, "at least 33 px")


@case
def train_unknown_camera_key(tmp, fx):
    return Case(_train(fx.image32, tmp, "--set", 'image_keys=["observation.images.top"]'), "image_keys")


@case
def train_corrupt_video(tmp, fx):
    data = copy(fx.video, tmp / "video")
    video = next((data / "videos").rglob("*.mp4"))
    truncate(video, 0.3)
    argv = _train(
        data, tmp, "--set", 'image_keys=["observation.images.corner"]', "--set", "vision_norm=group"
    )
    return Case(argv, video.name)


# train on a dataset mixture ------------------------------------------------------------------------------
def _mixture(tmp, fx, second: Path, *extra: str) -> list[str]:
    return _train(fx.dataset, tmp, "--dataset", str(second), *extra)


@case
def train_mixture_weights_do_not_match_the_datasets(tmp, fx):
    return Case(_mixture(tmp, fx, fx.image32, "--dataset-weights", "0.5"), "1 number(s) but 2 dataset(s)")


@case
def train_mixture_negative_weight(tmp, fx):
    return Case(_mixture(tmp, fx, _data(tmp, fx), "--dataset-weights=-0.5,1"), ">= 0")


@case
def train_mixture_all_weights_zero(tmp, fx):
    return Case(_mixture(tmp, fx, _data(tmp, fx), "--dataset-weights", "0,0"), "all 0")


@case
def train_mixture_weights_not_numbers(tmp, fx):
    return Case(_mixture(tmp, fx, _data(tmp, fx), "--dataset-weights", "most,rest"), "--dataset-weights")


@case
def train_mixture_other_fps(tmp, fx):
    data = _data(tmp, fx)
    edit_json(data / "meta/info.json", lambda info: info.update(fps=40))
    return Case(_mixture(tmp, fx, data), "different fps")


@case
def train_mixture_other_feature_shape(tmp, fx):
    from tests.data.mixture_fixture import write_small_dataset

    other = write_small_dataset(tmp / "other", fps=80, state_dim=39, action_dim=5)
    return Case(_mixture(tmp, fx, other), f"and {other} disagree on the shape of 'action'")


@case
def train_mixture_camera_in_one_dataset_only(tmp, fx):
    return Case(_mixture(tmp, fx, fx.image32), "'observation.images.corner' is in the dataset at")


@case
def train_mixture_rename_of_a_missing_key(tmp, fx):
    argv = _mixture(tmp, fx, fx.image32, "--rename", "observation.images.top=observation.images.corner")
    return Case(argv, "--rename observation.images.top")


@case
def train_per_dataset_normalization_of_one_dataset(tmp, fx):
    return Case(_train(fx.dataset, tmp, "--normalization", "per-dataset"), "needs a mixture")


@case
def train_resume_mixture_with_another_dataset_list(tmp, fx):
    run = copy(fx.run, tmp / "run")
    argv = [
        "train",
        "--dataset",
        str(fx.dataset),
        "--dataset",
        str(fx.image32),
        "--out",
        str(run),
        "--resume",
    ]
    return Case(argv, "same --dataset list")


# eval ---------------------------------------------------------------------------------------------------
@case
def eval_policy_missing(tmp, fx):
    return Case(_eval(tmp / "nowhere"), "no policy")


@case
def eval_folder_without_policy(tmp, fx):
    (tmp / "empty").mkdir()
    return Case(_eval(tmp / "empty"), "holds neither")


@case
def eval_run_without_export(tmp, fx):
    run = copy(fx.run, tmp / "run")
    import shutil

    shutil.rmtree(run / "policy")
    return Case(_eval(run), "without an exported policy")


@case
def eval_out_is_file(tmp, fx):
    path, check = _user_file(tmp, "results.json")
    return Case(_eval(fx.policy, "--out", str(path)), "--out", check)


@case
def eval_video_dir_is_file(tmp, fx):
    path, check = _user_file(tmp, "videos")
    return Case(_eval(fx.policy, "--video-dir", str(path)), "--video-dir", check)


@case
def eval_weights_truncated(tmp, fx):
    policy = _policy(tmp, fx)
    truncate(policy / "model.safetensors")
    return Case(_eval(policy), "model.safetensors")


@case
def eval_weights_empty(tmp, fx):
    policy = _policy(tmp, fx)
    (policy / "model.safetensors").write_bytes(b"")
    return Case(_eval(policy), "model.safetensors")


@case
def eval_weights_nan(tmp, fx):
    import torch
    from safetensors.torch import load_file, save_file

    policy = _policy(tmp, fx)
    weights = load_file(policy / "model.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 2)
    weights[name][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in weights.items()}, policy / "model.safetensors")
    assert torch.isnan(load_file(policy / "model.safetensors")[name]).any()
    return Case(_eval(policy), "NaN")


@case
def eval_weights_of_another_config(tmp, fx):
    policy = _policy(tmp, fx)
    edit_json(policy / "config.json", lambda config: config["denoiser"].update(width=24, heads=2))
    return Case(_eval(policy), "model.safetensors")


@case
def eval_config_not_json(tmp, fx):
    policy = _policy(tmp, fx)
    (policy / "config.json").write_text("{")
    return Case(_eval(policy), "config.json")


@case
def eval_config_unknown_key(tmp, fx):
    policy = _policy(tmp, fx)
    edit_json(policy / "config.json", lambda config: config.update(bogus=1))
    return Case(_eval(policy), "bogus")


@case
def eval_config_wrong_type(tmp, fx):
    policy = _policy(tmp, fx)
    edit_json(policy / "config.json", lambda config: config.update(n_action_steps="five"))
    return Case(_eval(policy), "n_action_steps")


@case
def eval_unknown_policy_type(tmp, fx):
    policy = _policy(tmp, fx)
    edit_json(policy / "config.json", lambda config: config.update(policy_type="gpt"))
    return Case(_eval(policy), "policy_type")


@case
def eval_stats_missing(tmp, fx):
    policy = _policy(tmp, fx)
    (policy / "stats.json").unlink()
    return Case(_eval(policy), "stats.json")


@case
def eval_stats_disagree_with_weights(tmp, fx):
    policy = _policy(tmp, fx)
    edit_json(policy / "stats.json", lambda stats: stats[ACTION_KEY].update(max=[9.0] * 4))
    return Case(_eval(policy), "stats.json")


@case
def eval_stats_not_json(tmp, fx):
    policy = _policy(tmp, fx)
    (policy / "stats.json").write_text("[1, 2")
    return Case(_eval(policy), "stats.json")


@case
def eval_episodes_zero(tmp, fx):
    return Case(["eval", "--policy", str(fx.policy), "--episodes-per-task", "0"], "episodes_per_task")


@case
def eval_workers_zero(tmp, fx):
    return Case(_eval(fx.policy, "--workers", "0"), "num_workers")


@case
def eval_unknown_task(tmp, fx):
    return Case(["eval", "--policy", str(fx.policy), "--tasks", "juggle"], "unknown task")


@case
def eval_unknown_suite(tmp, fx):
    return Case(["eval", "--policy", str(fx.policy), "--suite", "libero"], "--suite")


@case
def eval_unknown_shipped_name(tmp, fx):
    return Case(_eval("mt10-mode-huge"), "mt10-mode-huge")


# export, and exported files -----------------------------------------------------------------------------
def _export(policy: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--policy", str(policy), "--out", str(out), *extra]


@case
def export_policy_missing(tmp, fx):
    return Case(_export(tmp / "nowhere", tmp / "p.onnx"), "no policy")


@case
def export_folder_without_policy(tmp, fx):
    (tmp / "empty").mkdir()
    return Case(_export(tmp / "empty", tmp / "p.onnx"), "holds neither")


@case
def export_unknown_quantize(tmp, fx):
    return Case(_export(fx.policy, tmp / "p.onnx", "--quantize", "int4"), "--quantize")


@case
def export_out_not_onnx(tmp, fx):
    return Case(_export(fx.policy, tmp / "p.pt"), ".onnx file")


@case
def export_out_exists(tmp, fx):
    path, check = _user_file(tmp, "mine.onnx")
    return Case(_export(fx.policy, path), "--overwrite", check)


@case
def export_out_is_folder(tmp, fx):
    (tmp / "folder.onnx").mkdir()
    return Case(_export(fx.policy, tmp / "folder.onnx"), "is a folder")


@case
def export_batch_zero(tmp, fx):
    return Case(_export(fx.policy, tmp / "p.onnx", "--batch", "0"), "--batch")


@case
def export_static_without_calibration(tmp, fx):
    return Case(_export(fx.policy, tmp / "p.onnx", "--quantize", "int8-static"), "--calibration")


@case
def export_calibration_missing(tmp, fx):
    argv = _export(fx.policy, tmp / "p.onnx", "--quantize", "int8-static", "--calibration", tmp / "nowhere")
    return Case(argv, "nowhere")


@case
def export_calibration_of_other_shapes(tmp, fx):
    from tests.policies.common import tiny_policy  # 5-d states; the dataset has 39

    policy = tiny_policy().save_pretrained(tmp / "policy")
    argv = _export(policy, tmp / "p.onnx", "--quantize", "int8-static", "--calibration", fx.dataset)
    return Case(argv, "calibrate on the policy's own training data")


@case
def export_task_for_a_sigma_policy(tmp, fx):
    return Case(_export(fx.policy, tmp / "p.onnx", "--task", "close the drawer"), "leave the task")


@case
def export_an_export(tmp, fx):
    return Case(_export(fx.exported, tmp / "p.onnx"), "exported already")


@case
def eval_onnx_truncated(tmp, fx):
    path = tmp / "policy.onnx"
    path.write_bytes(fx.exported.read_bytes())
    truncate(path)
    return Case(_eval(path), "not a readable ONNX model")


@case
def eval_onnx_garbage(tmp, fx):
    path = tmp / "policy.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    return Case(_eval(path), "not a readable ONNX model")


@case
def eval_onnx_not_ours(tmp, fx):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), str(tmp / "foreign.onnx"))
    return Case(_eval(tmp / "foreign.onnx"), "not a mode-policy export")


@case
def eval_onnx_compile(tmp, fx):
    return Case(_eval(fx.exported, "--compile"), "no compiled path")


@case
def eval_onnx_no_expert_cache(tmp, fx):
    return Case(_eval(fx.exported, "--no-expert-cache"), "no expert cache")


# --inference-dataset: only a policy trained on a mixture with per-dataset stats has datasets to choose
@case
def eval_inference_dataset_of_a_single_stats_policy(tmp, fx):
    return Case(_eval(fx.policy, "--inference-dataset", "sim"), "holds one set of normalisation stats")


@case
def eval_inference_dataset_of_an_exported_file(tmp, fx):
    return Case(_eval(fx.exported, "--inference-dataset", "sim"), "export the policy again")


@case
def export_inference_dataset_of_a_single_stats_policy(tmp, fx):
    argv = _export(fx.policy, tmp / "p.onnx", "--inference-dataset", "sim")
    return Case(argv, "holds one set of normalisation stats")


@case
def serve_inference_dataset_of_a_single_stats_policy(tmp, fx):
    argv = ["serve", "--policy", str(fx.policy), "--port", "0", "--inference-dataset", "sim"]
    return Case(argv, "holds one set of normalisation stats")


@case
def eval_inference_dataset_through_a_server(tmp, fx):
    argv = ["eval", "--server", "ws://127.0.0.1:9", "--inference-dataset", "sim"]
    return Case(argv, "the server's business")


# distill, inspect, quickstart ---------------------------------------------------------------------------
def _distill(fx, tmp, *extra) -> list[str]:
    return ["distill", "--teacher", str(fx.run), "--out", str(tmp / "student"), "--steps", "1", *extra]


@case
def distill_sigmas_not_numbers(tmp, fx):
    return Case(_distill(fx, tmp, "--sigmas", "abc"), "--sigmas")


@case
def distill_sigmas_negative(tmp, fx):
    return Case(_distill(fx, tmp, "--sigmas=-0.1,0.2"), "score_sigmas")


@case
def distill_experts_zero(tmp, fx):
    return Case(_distill(fx, tmp, "--experts", "0"), "experts")


@case
def distill_teacher_missing(tmp, fx):
    return Case(["distill", "--teacher", str(tmp / "nowhere"), "--out", str(tmp / "s")], "teacher")


@case
def distill_out_is_file(tmp, fx):
    path, check = _user_file(tmp)
    return Case(["distill", "--teacher", str(fx.run), "--out", str(path)], "--out", check)


@case
def distill_inference_dataset_of_a_single_stats_teacher(tmp, fx):
    return Case(_distill(fx, tmp, "--inference-dataset", "sim"), "holds one set of normalisation stats")


@case
def inspect_dense_policy(tmp, fx):
    return Case(["inspect", str(fx.dense_policy), "--out", str(tmp / "usage")], "no routed experts")


@case
def inspect_out_is_file(tmp, fx):
    path, check = _user_file(tmp)
    return Case(["inspect", str(fx.policy), "--out", str(path)], "--out", check)


@case
def quickstart_too_short(tmp, fx):
    return Case(["quickstart", "--minutes", "1", "--out", str(tmp / "q")], "at least 2 minutes")


@case
def quickstart_out_is_file(tmp, fx):
    path, check = _user_file(tmp)
    return Case(["quickstart", "--out", str(path)], "--out", check)


@case
def unknown_command(tmp, fx):
    return Case(["fly"], "invalid choice")


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``mode-policy argv`` in this process: (exit code, everything printed)."""
    from mode_policy.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def assert_one_clear_line(code: int, output: str, needle: str) -> str:
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert "Traceback" not in output, output
    assert code == 2, f"exit code {code}\n{output}"
    assert len(errors) == 1, output
    assert needle in errors[0], errors[0]
    assert "weights_only=False" not in output
    return errors[0]


@pytest.mark.parametrize("make_case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_gives_one_clear_line(make_case, fx, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = make_case(tmp_path, fx)
    code, output = run_cli(case.argv, capsys)
    assert_one_clear_line(code, output, case.needle)
    if case.check is not None:
        case.check()


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_eval_out_file_is_refused_before_any_rollout(fx, tmp_path, capsys, monkeypatch):
    """The results of a long evaluation are never lost to an output path that cannot be written."""
    from mode_policy.evaluation import env_pool

    def no_rollouts(*args, **kwargs):
        raise AssertionError("rollouts started although --out cannot be written")

    monkeypatch.setattr(env_pool.EnvPool, "__init__", no_rollouts)
    path, check = _user_file(tmp_path, "results.json")
    code, output = run_cli(_eval(fx.policy, "--out", str(path)), capsys)
    assert_one_clear_line(code, output, str(path))
    check()


def test_diverged_run_resumes_with_a_lower_learning_rate(fx, tmp_path, capsys):
    """The divergence message's advice works: --resume with another --lr continues from the checkpoint."""
    import torch

    run = copy(fx.run, tmp_path / "run")
    argv = ["train", "--dataset", str(fx.dataset), "--out", str(run), "--resume", "--steps", "3",
            "--lr", "1e-5"]  # fmt: skip
    code, output = run_cli(argv, capsys)
    assert code == 0, output
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [1e-5, 1e-5]
    assert json.loads((run / "train_config.json").read_text())["lr"] == 1e-5


def test_collect_removes_stale_partial_folders(tmp_path, capsys):
    """A killed collection's hidden partial folder is removed by the next write into the same parent."""
    from mode_policy.data.writer import OWNER_FILE

    stale = tmp_path / ".data.partial-abc"
    stale.mkdir()
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    (stale / OWNER_FILE).write_text(json.dumps({"pid": dead_pid, "host": os.uname().nodename}))
    alive = tmp_path / ".data.partial-def"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match="removed 1 partial folder"):
        write_dataset(tmp_path / "data", episodes_per_task=1)
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.partial-def", "data"]


def test_collect_warns_about_frames_too_small_for_the_encoder():
    from mode_policy.envs.collect import camera_features

    with pytest.warns(UserWarning, match="--image-size 33"):
        camera_features(["corner"], 32)


def test_constant_action_dimension_is_warned(fx, tmp_path, capsys):
    data = _data(tmp_path, fx)

    def freeze(values):
        values[:, 3] = 0.25
        return values

    edit_parquet(data / DATA_FILE, ACTION_KEY, freeze)
    (data / "meta/stats.json").unlink()  # recomputed from the data
    code, output = run_cli([*_train(data, tmp_path), "--steps", "1"], capsys)
    assert code == 0, output
    assert "mode-policy: warning: action dimension(s) [3]" in output


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--dataset", "/nonexistent/data", "--out", "/tmp/x"], "no such dataset folder"),
        (["distill", "--teacher", "x", "--out", "y", "--sigmas", "abc"], "--sigmas"),
    ],
)
def test_cli_subprocess(argv, needle):
    """The real process: exit status 2 and one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "mode_policy.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
