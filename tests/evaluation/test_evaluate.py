"""Rollouts: expert cache on/off identical, worker count irrelevant, files written, policy lookup errors."""

import json
import re

import numpy as np
import pytest
import torch

from mode_policy.evaluation import evaluate
from mode_policy.policies.folders import resolve_policy_dir
from tests.evaluation.conftest import TASKS


def _run(policy_dir, **kwargs):
    values = dict(tasks=TASKS, episodes_per_task=2, seed=7, max_episode_steps=25, record_actions=True,
                  progress=False)  # fmt: skip
    values.update(kwargs)
    return evaluate(policy_dir, **values)


def test_expert_cache_does_not_change_actions(tiny_policy_dir, tmp_path):
    cached = _run(tiny_policy_dir, use_expert_cache=True, num_workers=2, out_dir=tmp_path / "cached")
    routed = _run(tiny_policy_dir, use_expert_cache=False, num_workers=1)
    assert cached["actions"].keys() == routed["actions"].keys()
    for key, actions in cached["actions"].items():
        assert actions.shape == (25, 4)
        np.testing.assert_allclose(actions, routed["actions"][key], rtol=0, atol=1e-5)
    assert [e["seed"] for e in cached["episodes"]] == [e["seed"] for e in routed["episodes"]]
    assert cached["use_expert_cache"] and not routed["use_expert_cache"]
    assert cached["inference"]["ms_per_chunk_batch1_median"] > 0
    saved = json.loads((tmp_path / "cached" / "results.json").read_text())
    assert set(saved["per_task"]) == set(TASKS) and "actions" not in saved
    assert (tmp_path / "cached" / "results.md").is_file()


def test_replan_steps_sets_how_many_actions_run_per_chunk(tiny_policy_dir):
    calls = {}
    for replan in (None, 1, 10):
        results = _run(tiny_policy_dir, num_workers=1, replan_steps=replan)
        calls[results["replan_steps"]] = results["inference"]["policy_calls"]
        first = {key: actions[0] for key, actions in results["actions"].items()}
        if replan is None:
            default_first = first
        for key, action in first.items():  # the first chunk is drawn the same way whatever is executed of it
            np.testing.assert_allclose(action, default_first[key], rtol=0, atol=1e-6)
    assert calls == {5: 5, 1: 25, 10: 3}  # 25 steps, all 4 episodes in one wave, none succeeds in 25 steps
    for replan, words in ((0, "integer >= 1"), (11, "cannot exceed the policy's chunk_size (10)")):
        with pytest.raises(ValueError, match=re.escape(words)):
            _run(tiny_policy_dir, num_workers=1, replan_steps=replan)


def test_eval_seeds_are_disjoint_from_demo_seeds(tiny_policy_dir):
    from mode_policy.envs.metaworld import episode_seed

    results = _run(
        tiny_policy_dir, episodes_per_task=1, max_episode_steps=5, record_actions=False, num_workers=1
    )
    demo = {episode_seed(t, e, "demo", 7) for t in TASKS for e in range(100)}
    assert not demo & {e["seed"] for e in results["episodes"]}


def test_policy_lookup_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped pretrained name"):
        resolve_policy_dir("no-such-policy")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="--resume"):
        resolve_policy_dir(tmp_path)


def test_missing_osmesa_gives_a_clear_message(tiny_policy_dir, tmp_path, capsys, monkeypatch):
    import mode_policy.evaluation.rollout as rollout

    monkeypatch.setattr(rollout, "osmesa_available", lambda: False)
    _run(tiny_policy_dir, episodes_per_task=1, max_episode_steps=3, num_workers=1, video_dir=tmp_path / "v")
    assert "libosmesa6" in capsys.readouterr().out
    assert not (tmp_path / "v").exists()


def test_shipped_pretrained_policy_loads_and_acts():
    from mode_policy.envs.metaworld import instruction
    from mode_policy.policies.folders import shipped_pretrained
    from mode_policy.policies.registry import load_policy_and_run

    assert "mt10-mode-small" in shipped_pretrained()
    policy, policy_dir, _ = load_policy_and_run("mt10-mode-small", "cpu")
    assert (policy_dir / "README.md").is_file()
    assert policy.parameter_counts()["total"] < 10e6 / 2  # float16 weights: under 10 MB on disk
    obs = {"observation.state": torch.zeros(2, 39), "task": [instruction("reach-v3"), instruction("push-v3")]}
    actions = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (2, 10, 4) and torch.isfinite(actions).all()
    assert actions.abs().max() <= 1.0 + 1e-5  # inside the demonstrations' action range
