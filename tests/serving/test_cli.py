"""``mode-policy serve`` refusals and ``mode-policy eval --server`` through a live server."""

from __future__ import annotations

import json

import pytest

from mode_policy.cli import main
from mode_policy.policies import load_policy
from mode_policy.serving import PolicyServer
from tests.bad_inputs.fixtures import write_policy


@pytest.mark.slow
def test_eval_through_a_server_compares_sync_blending_and_inpainting(tmp_path, capsys):
    pytest.importorskip("metaworld")
    policy = load_policy(write_policy(tmp_path / "policy"), device="cpu")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    out = tmp_path / "served"
    with PolicyServer(policy, port=0, token="s3cret") as server:
        code = main(["eval", "--server", server.url, "--token-file", str(token), "--tasks", "reach",
                     "--episodes-per-task", "2", "--workers", "1", "--max-episode-steps", "25",
                     "--latency-ms", "0,150", "--control-hz", "20", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "served.json").read_text())
    runs = {(run["mode"], run["latency_ms"]): run for run in results["runs"]}
    assert set(runs) == {("sync", None), ("weighted", 0.0), ("weighted", 150.0), ("inpaint", 0.0),
                         ("inpaint", 150.0)}  # fmt: skip
    assert runs[("inpaint", 150.0)]["delay_steps"] >= 3  # 150 ms at 20 Hz, plus the round trip
    for run in runs.values():
        assert len(run["episodes"]) == 2 and all(e["steps"] == 25 for e in run["episodes"])
        assert run["jerk"] >= 0 and run["requests"] > 0 and run["lost_replies"] == 0
    assert "| inpaint | 150 ms |" in (out / "served.md").read_text()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "--policy", "no/such/policy"], "no/such/policy"),
        (["serve", "--policy", "mt10-mode-small", "--host", "0.0.0.0"], "--token-file"),
        (["serve", "--policy", "mt10-mode-small", "--token-file", "missing.txt"], "does not exist"),
        (["eval", "--server", "ws://127.0.0.1:9", "--tasks", "reach"], "no policy server answers"),
        (["eval", "--server", "http://x", "--tasks", "reach"], "ws://"),
        (["eval", "--policy", "mt10-mode-small", "--latency-ms", "50"], "go with --server"),
        (["eval", "--policy", "mt10-mode-small", "--token-file", "t"], "go with --server"),
        (["eval", "--policy", "mt10-mode-small", "--replan-steps", "11"], "exceed the policy's chunk_size"),
        (["eval", "--server", "ws://127.0.0.1:9", "--replan-steps", "0"], "--replan-steps"),
        (["eval", "--tasks", "reach"], "--policy"),
    ],
)  # fmt: skip
def test_cli_refusals_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--server" in argv:
        monkeypatch.setattr("mode_policy.serving.client.PolicyClient.__init__.__kwdefaults__", {
            "token": None, "timeout": 2.0, "retry_s": 0.2, "name": "test"})  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_an_empty_token_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert main(["serve", "--policy", "mt10-mode-small", "--token-file", str(empty)]) == 2
    assert "one non-empty line" in capsys.readouterr().err


def test_serving_on_a_port_in_use_is_one_line(tmp_path, capsys):
    policy = write_policy(tmp_path / "policy")
    with PolicyServer(load_policy(policy, device="cpu"), port=0) as taken:
        assert main(["serve", "--policy", str(policy), "--port", str(taken.port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot serve on 127.0.0.1:{taken.port}" in err, err


@pytest.mark.slow
def test_an_image_policy_is_evaluated_through_a_server(tmp_path, capsys):
    pytest.importorskip("metaworld")
    from mode_policy.evaluation.rollout import osmesa_available

    if not osmesa_available():
        pytest.skip("camera images need OSMesa (apt-get install libosmesa6)")
    import numpy as np
    import torch

    from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig
    from tests.bad_inputs.fixtures import INSTRUCTIONS

    torch.manual_seed(0)
    config = MoDEPolicyConfig.from_dict({
        "state_dim": 39, "language_encoder": "onehot", "tasks": list(INSTRUCTIONS), "n_obs_steps": 2,
        "image_keys": ["observation.images.corner"], "image_size": 40, "vision_feature_dim": 16,
        "num_inference_steps": 2,
        "denoiser": {"width": 16, "depth": 1, "heads": 2, "num_experts": 2, "top_k": 1},
    })  # fmt: skip
    stats = {key: {"mean": np.zeros(n), "std": np.ones(n), "min": -np.ones(n), "max": np.ones(n)}
             for key, n in (("observation.state", 39), ("action", 4))}  # fmt: skip
    policy = MoDEPolicy(config, stats).eval()
    out = tmp_path / "served"
    with PolicyServer(policy, port=0) as server:
        code = main(["eval", "--server", server.url, "--tasks", "reach", "--episodes-per-task", "1",
                     "--workers", "1", "--max-episode-steps", "12", "--latency-ms", "100", "--modes",
                     "sync,inpaint", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    runs = json.loads((out / "served.json").read_text())["runs"]
    assert [run["mode"] for run in runs] == ["sync", "inpaint"]
    for run in runs:  # every request carried two camera frames and two states, as the policy checks
        assert run["steps"] == 12 and run["requests"] >= 2
