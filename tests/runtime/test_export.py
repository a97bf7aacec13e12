"""ONNX export: every family member's exported chunk equals torch's for the same noise, and stays small."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from mode_policy.policies import load_policy
from mode_policy.runtime import OnnxPolicy, export_onnx
from mode_policy.runtime.export import TOLERANCE
from tests.policies.common import TASKS
from tests.runtime.common import VARIANTS, observations, same_noise_chunks, variant_policy

GRAPH_BYTES = 150_000  # what a tiny graph may add to its weights (nodes, names, metadata)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_exports_and_equals_torch(name, tmp_path):
    policy = variant_policy(name, steps=2)
    report = export_onnx(policy, tmp_path / "policy.onnx")
    assert report.max_abs_diff <= TOLERANCE and report.quantize is None
    # Each used expert stored once, shared by every step (not once per step), nothing else big.
    assert report.bytes <= 1.05 * report.weight_bytes + GRAPH_BYTES, (report.bytes, report.weight_bytes)
    exported = load_policy(tmp_path / "policy.onnx")
    assert isinstance(exported, OnnxPolicy) and type(exported.config) is type(policy.config)
    obs = observations(policy.config)  # 3 rows with different tasks through a batch-1 graph
    expected, actual = same_noise_chunks(policy, exported, obs)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def test_only_used_experts_are_stored(tmp_path):
    policy = variant_policy("sigma", steps=2, num_experts=8, top_k=1)
    cache = policy.denoiser.cache_experts(policy.config.sampling_sigmas())
    used = sum(len({e for step in cache.expert_ids() for e in step[layer]}) for layer in range(2))
    export_onnx(policy, tmp_path / "policy.onnx")
    names = [t.name for t in onnx.load(str(tmp_path / "policy.onnx")).graph.initializer]
    stored = [n for n in names if ".experts.w_in." in n]
    assert len(stored) == used < 2 * 8  # 2 steps, top-1: at most 2 of 8 experts per layer


def test_one_task_of_a_goal_routed_policy(tmp_path):
    policy = variant_policy("task", steps=2)
    export_onnx(policy, tmp_path / "open.onnx", task=TASKS[1])
    exported = OnnxPolicy(tmp_path / "open.onnx")
    assert exported.tasks == [TASKS[1]] and "goal" in exported.input_names
    obs = dict(observations(policy.config), task=TASKS[1])
    expected, actual = same_noise_chunks(policy, exported, obs)
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="unknown task 'reach the red button'"):
        exported.predict_action_chunk(dict(obs, task=TASKS[0]))


def test_dynamic_batch_and_task_indices(tmp_path):
    policy = variant_policy("sigma_goal", steps=2)
    export_onnx(policy, tmp_path / "any.onnx", dynamic_batch=True)
    exported = OnnxPolicy(tmp_path / "any.onnx")
    assert exported.batch_size is None and "task_index" in exported.input_names
    obs = observations(policy.config, batch=5)
    expected, actual = same_noise_chunks(policy, exported, obs)
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)
    by_index = {k: v for k, v in obs.items() if k != "task"}
    by_index["task_index"] = np.array([TASKS.index(t) for t in obs["task"]])
    indexed = exported.predict_action_chunk(by_index, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(indexed, actual, atol=0, rtol=0)


def test_a_mot_graph_keeps_its_context_cache_for_any_batch(tmp_path):
    """The context is encoded for (steps x batch) rows at the start of the graph: the batch stays symbolic."""
    policy = variant_policy("mot", steps=2)
    export_onnx(policy, tmp_path / "mot.onnx", dynamic_batch=True)
    exported = OnnxPolicy(tmp_path / "mot.onnx")
    for batch in (1, 5):
        expected, actual = same_noise_chunks(policy, exported, observations(policy.config, batch=batch))
        torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def test_metadata_describes_the_policy(tmp_path):
    policy = variant_policy("stage", steps=2)
    export_onnx(policy, tmp_path / "policy.onnx", batch=4)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "policy.onnx")).metadata_props}
    assert meta["mode_policy.format"] == "mode_policy.chunk/1" and meta["mode_policy.batch"] == "4"
    assert json.loads(meta["mode_policy.policy"]) == json.loads(json.dumps(policy.config.to_dict()))
    assert json.loads(meta["mode_policy.tasks"]) == TASKS
    inputs = json.loads(meta["mode_policy.inputs"])
    assert [i["name"] for i in inputs] == ["observation.state", "goal", "noise"]
    assert inputs[2]["shape"] == ["batch", policy.config.chunk_size, policy.config.action_dim]


def test_int8_weights_are_smaller_and_close(tmp_path):
    policy = variant_policy("sigma", steps=2, width=64)
    fp32 = export_onnx(policy, tmp_path / "fp32.onnx")
    int8 = export_onnx(policy, tmp_path / "int8.onnx", quantize="int8")
    assert int8.bytes <= 0.5 * fp32.bytes  # tiny graphs: the graph itself is a larger share than usual
    exported = OnnxPolicy(tmp_path / "int8.onnx")
    assert exported.quantize == "int8"
    obs = observations(policy.config, batch=8)
    expected, actual = same_noise_chunks(policy, exported, obs)
    other_noise = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(6))
    # Quantised, yet closer to torch's chunk for the same noise than torch's own chunks for other noise.
    error, spread = (actual - expected).abs().mean(), (other_noise - expected).abs().mean()
    assert 0 < error <= 0.5 * spread, (error, spread)


def test_int8_static_calibrates_on_a_dataset(tmp_path):
    from tests.bad_inputs.fixtures import write_dataset, write_policy

    dataset = write_dataset(tmp_path / "data", episodes_per_task=1)
    report = export_onnx(write_policy(tmp_path / "policy"), tmp_path / "qdq.onnx", quantize="int8-static",
                         calibration=dataset)  # fmt: skip
    model = onnx.load(str(tmp_path / "qdq.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert report.max_abs_diff < 0.5  # of actions in [-1, 1]


def test_export_refuses_what_it_cannot_export(tmp_path):
    policy = variant_policy("sigma", steps=2)
    with pytest.raises(ValueError, match="--quantize must be one of"):
        export_onnx(policy, tmp_path / "p.onnx", quantize="int4")
    with pytest.raises(ValueError, match=r"must be an \.onnx file"):
        export_onnx(policy, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="pass --calibration"):
        export_onnx(policy, tmp_path / "p.onnx", quantize="int8-static")
    with pytest.raises(ValueError, match="leave the task"):
        export_onnx(policy, tmp_path / "p.onnx", task=TASKS[0])
    export_onnx(policy, tmp_path / "p.onnx")
    with pytest.raises(ValueError, match="is exported already"):
        export_onnx(OnnxPolicy(tmp_path / "p.onnx"), tmp_path / "again.onnx")
    policy.config.sampler = "euler_ancestral"
    with pytest.raises(ValueError, match="draws noise at every step"):
        export_onnx(policy, tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]  # nothing half-written
