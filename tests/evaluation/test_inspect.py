import json

import pytest

from mode_policy.cli import main
from mode_policy.evaluation.inspect import inspect_policy


def test_inspect_writes_usage_heatmap_and_json(tiny_policy_dir, tmp_path):
    report = inspect_policy(tiny_policy_dir, tmp_path / "inspect")
    assert (tmp_path / "inspect" / "expert_usage.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "inspect" / "expert_usage.json").read_text())
    steps, layers, experts = len(saved["sigmas"]) - 1, 2, 4
    assert len(saved["usage"]) == steps and len(saved["usage"][0]) == layers
    assert all(abs(sum(row) - 1) < 1e-5 for step in saved["usage"] for row in step)
    assert len(saved["usage"][0][0]) == experts and len(report["per_task"]) == 2


def test_inspect_cli_refuses_dense_policies(tmp_path, capsys):
    pytest.importorskip("metaworld")
    import numpy as np

    from mode_policy.policies.mode.configuration import MoDEPolicyConfig
    from mode_policy.policies.mode.modeling import MoDEPolicy

    config = MoDEPolicyConfig.from_dict(
        {"language_encoder": "onehot", "tasks": ["a"], "denoiser": {"width": 16, "heads": 2, "num_experts": 1,
         "top_k": 1, "depth": 1}}
    )  # fmt: skip
    stats = {k: {s: np.ones(n) for s in ("mean", "std", "min", "max")} for k, n in
             (("observation.state", 39), ("action", 4))}  # fmt: skip
    stats["action"]["min"] = -stats["action"]["min"]
    policy_dir = MoDEPolicy(config, stats).save_pretrained(tmp_path / "dense")
    assert main(["inspect", str(policy_dir)]) == 2
    assert "no routed experts" in capsys.readouterr().err
