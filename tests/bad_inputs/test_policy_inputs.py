"""Bad input at a policy's boundary (the Python API a robot loop calls): one clear line, never a NaN action
or a traceback from inside the ResNet or ONNX Runtime. The same checks serve every policy type (MoDE, the
VDD student, and an exported policy run by ONNX Runtime).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mode_policy.distill import VDDPolicy, VDDPolicyConfig
from mode_policy.keys import STATE_KEY
from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig

CAMERA = "observation.images.corner"
SIZE = 40
STATS = {
    STATE_KEY: {"mean": [0.0] * 5, "std": [1.0] * 5, "min": [-1.0] * 5, "max": [1.0] * 5},
    "action": {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4},
}


@pytest.fixture(scope="module")
def image_policy():
    torch.manual_seed(0)
    config = MoDEPolicyConfig.from_dict({
        "state_dim": 5, "language_encoder": "onehot", "tasks": ["a", "b"], "image_keys": [CAMERA],
        "image_size": SIZE, "vision_feature_dim": 8, "vision_norm": "group", "num_inference_steps": 2,
        "denoiser": {"width": 16, "depth": 1, "heads": 2},
    })  # fmt: skip
    return MoDEPolicy(config, STATS).eval()


@pytest.fixture(scope="module")
def exported_image_policy(image_policy, tmp_path_factory):
    from mode_policy.runtime import OnnxPolicy, export_onnx

    path = tmp_path_factory.mktemp("exported") / "image.onnx"
    export_onnx(image_policy, path)
    return OnnxPolicy(path)


@pytest.fixture(params=["torch", "onnx"])
def any_image_policy(request):
    return request.getfixturevalue("image_policy" if request.param == "torch" else "exported_image_policy")


@pytest.fixture(scope="module")
def student():
    config = VDDPolicyConfig(state_dim=5, language_encoder="onehot", tasks=["a", "b"], hidden_dim=16)
    return VDDPolicy(config, STATS).eval()


def _obs(image=None, state=None, task="a"):
    rng = np.random.default_rng(0)
    return {
        CAMERA: rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8) if image is None else image,
        STATE_KEY: rng.normal(size=(2, 5)).astype(np.float32) if state is None else state,
        "task": task,
    }


def _nan_image():
    image = np.random.default_rng(1).random((2, 3, SIZE, SIZE)).astype(np.float32)
    image[0, 0, 0, 0] = np.nan
    return image


BAD = {
    "image larger than trained": (_obs(np.zeros((2, 64, 64, 3), np.uint8)), "trained on 40x40"),
    "image smaller than trained": (_obs(np.zeros((2, 8, 8, 3), np.uint8)), "trained on 40x40"),
    "image with NaN": (_obs(_nan_image()), "NaN"),
    "one-channel image": (_obs(np.zeros((2, 1, SIZE, SIZE), np.uint8)), "3 colour channels"),
    "float image in 0..255": (_obs(np.full((2, 3, SIZE, SIZE), 200.0, np.float32)), "[0, 1]"),
    "int image above 255": (_obs(np.full((2, 3, SIZE, SIZE), 300, np.int16)), "[0, 255]"),
    "boolean image": (_obs(np.ones((2, 3, SIZE, SIZE), bool)), "dtype"),
    "image without a batch axis": (_obs(np.zeros((SIZE, SIZE, 3), np.uint8)), "shape"),
    "camera missing": ({STATE_KEY: np.zeros((2, 5), np.float32), "task": "a"}, CAMERA),
    "batch sizes disagree": (_obs(state=np.zeros((3, 5), np.float32)), "batch size"),
    "state with NaN": (_obs(state=np.full((2, 5), np.nan, np.float32)), "NaN"),
    "state of the wrong width": (_obs(state=np.zeros((2, 6), np.float32)), "shape"),
    "state as text": (_obs(state="fast"), STATE_KEY),
    "task list of the wrong length": (_obs(task=["a", "b", "a"]), "instruction strings"),
    "task that is not a string": (_obs(task=[1, 2]), "instruction strings"),
    "task unknown to the one-hot encoder": (_obs(task="c"), "unknown task"),
    "observation that is not a dict": ([1, 2, 3], "dict"),
}


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) else str(error)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("method", ["predict_action_chunk", "select_action"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_observation_is_refused_with_one_line(any_image_policy, name, method):
    obs, needle = BAD[name]  # n_obs_steps == 1: a chunk accepts the shapes of one step
    any_image_policy.reset()
    with pytest.raises((ValueError, KeyError)) as raised:
        getattr(any_image_policy, method)(obs)
    assert needle in _one_line(raised.value)


def test_good_observations_in_both_layouts(any_image_policy):
    any_image_policy.reset()
    channels_last = any_image_policy.select_action(_obs())
    floats = np.random.default_rng(0).random((2, 3, SIZE, SIZE)).astype(np.float32)
    any_image_policy.reset()
    channels_first = any_image_policy.select_action(_obs(floats))
    assert channels_last.shape == channels_first.shape == (2, 4)
    assert torch.isfinite(channels_last).all() and torch.isfinite(channels_first).all()


def test_the_exported_image_policy_equals_torch(image_policy, exported_image_policy):
    """Cameras (uint8 in the graph, ResNet and FiLM exported) give torch's actions for the same noise."""
    obs = _obs()
    expected = image_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(3))
    actual = exported_image_policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "task_index, needle",
    [([0, 2], "in [0, 2)"), ([0.0, 1.0], "integer"), ([[0, 1]], "integer"), ([-1, 0], "in [0, 2)")],
)
def test_bad_task_index_of_an_exported_policy(exported_image_policy, task_index, needle):
    obs = {k: v for k, v in _obs().items() if k != "task"}
    with pytest.raises(ValueError) as raised:
        exported_image_policy.predict_action_chunk(dict(obs, task_index=np.array(task_index)))
    assert needle in _one_line(raised.value)


@pytest.mark.parametrize(
    "state, needle",
    [
        (np.full((2, 5), np.inf, np.float32), "NaN or inf"),
        (np.zeros((2, 4), np.float32), "shape"),
        (None, STATE_KEY),
    ],
)
def test_student_shares_the_checks(student, state, needle):
    obs = {"task": "a"} if state is None else {STATE_KEY: state, "task": "a"}
    student.reset()
    with pytest.raises((ValueError, KeyError)) as raised:
        student.select_action(obs)
    assert needle in _one_line(raised.value)


def test_non_finite_actions_are_refused(student):
    """A network driven to NaN (inputs far outside the data, damaged weights) never returns actions."""
    with torch.no_grad():
        student.network.mean_head.bias.fill_(float("nan"))
    try:
        with pytest.raises(ValueError, match="NaN or inf actions"):
            student.predict_action_chunk({STATE_KEY: np.zeros((1, 5), np.float32), "task": "a"})
    finally:
        with torch.no_grad():
            student.network.mean_head.bias.zero_()
