"""``mode-policy export`` then ``mode-policy eval --policy model.onnx``: the same seeded rollouts as torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mode_policy.cli import main
from mode_policy.evaluation import evaluate
from tests.bad_inputs.fixtures import write_policy


@pytest.mark.slow
def test_an_exported_policy_evaluates_through_the_cli(tmp_path, capsys):
    pytest.importorskip("metaworld")
    policy = write_policy(tmp_path / "policy")
    exported = tmp_path / "policy.onnx"
    assert main(["export", "--policy", str(policy), "--out", str(exported)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {exported}" in printed and "mode-policy eval --policy" in printed
    out = tmp_path / "results"
    code = main(["eval", "--policy", str(exported), "--tasks", "reach", "--episodes-per-task", "1",
                 "--workers", "1", "--max-episode-steps", "20", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"][0]["steps"] == 20 and results["policy"] == str(exported)
    # The same seeded rollout as the torch policy it came from, action for action.
    options = dict(tasks="reach", episodes_per_task=1, num_workers=1, max_episode_steps=20,
                   record_actions=True, progress=False)  # fmt: skip
    torch_actions = evaluate(policy, **options)["actions"]
    onnx_actions = evaluate(exported, **options)["actions"]
    for key, actions in torch_actions.items():
        np.testing.assert_allclose(onnx_actions[key], actions, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_eval_compile_runs_the_same_rollouts(tmp_path, capsys):
    pytest.importorskip("metaworld")
    policy = write_policy(tmp_path / "policy")
    options = dict(tasks="reach", episodes_per_task=1, num_workers=1, max_episode_steps=20,
                   record_actions=True, progress=False)  # fmt: skip
    eager = evaluate(policy, **options)
    compiled = evaluate(policy, compile=True, **options)
    assert compiled["compile_seconds"] > 0 and "compile_seconds" not in eager
    for key, actions in eager["actions"].items():
        np.testing.assert_allclose(compiled["actions"][key], actions, atol=1e-4, rtol=0)
    code = main(["eval", "--policy", str(policy), "--compile", "--tasks", "reach", "--episodes-per-task", "1",
                 "--workers", "1", "--max-episode-steps", "5"])  # fmt: skip
    assert code == 0 and "compiled the policy's chunk in" in capsys.readouterr().out
