"""MoDEPolicy: loss, sampling, the receding-horizon action queue, save/load and input checks."""

import json
from copy import deepcopy

import pytest
import torch

from mode_policy.nn import MoDEConfig
from mode_policy.nn.cnn import CNNDenoiserConfig
from mode_policy.policies import MoDEPolicy
from tests.policies.common import STATE_DIM, TASKS, make_batch, make_obs, tiny_config, tiny_policy, tiny_stats


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Training ---------------------------------------------------------------------------------------------
def test_loss_is_finite_backprops_and_logs():
    policy = tiny_policy()
    loss, logs = policy.compute_loss(make_batch(policy.config))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in policy.denoiser.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert {"loss", "diffusion", "load_balance", "z_loss", "expert_fraction"} <= set(logs)
    assert all(logs[k].dim() == 0 for k in ("loss", "diffusion", "load_balance", "z_loss"))
    config = policy.config.denoiser
    assert logs["expert_fraction"].shape == (config.depth, config.num_experts)
    torch.testing.assert_close(logs["expert_fraction"].sum(-1), torch.ones(config.depth))


def test_padded_actions_do_not_contribute_to_the_loss():
    policy = tiny_policy()
    batch = make_batch(policy.config, batch=4)
    batch["action_is_pad"][0, 2:] = True
    batch["action_is_pad"][3, 1:] = True
    base, _ = policy.compute_loss(batch, generator=generator())
    changed = dict(batch, action=batch["action"].clone())
    changed["action"][0, 2:] += 5.0
    changed["action"][3, 1:] -= 3.0
    same, _ = policy.compute_loss(changed, generator=generator())
    torch.testing.assert_close(same, base)
    # The same change on unpadded positions does move the loss (the check above is not vacuous).
    unmasked = dict(changed, action_is_pad=torch.zeros_like(batch["action_is_pad"]))
    reference = dict(batch, action_is_pad=unmasked["action_is_pad"])
    moved, _ = policy.compute_loss(unmasked, generator=generator())
    assert not torch.allclose(moved, policy.compute_loss(reference, generator=generator())[0])


def test_batch_values_are_cast_and_shapes_checked():
    policy = tiny_policy()
    batch = make_batch(policy.config)
    as_double = dict(batch, **{k: batch[k].double() for k in ("observation.state", "action")})
    torch.testing.assert_close(
        policy.compute_loss(as_double, generator=generator())[0],
        policy.compute_loss(batch, generator=generator())[0],
    )
    with pytest.raises(
        ValueError, match=r"'action' must have shape \(B, chunk_size, action_dim\) = \(6, 4, 2\)"
    ):
        policy.compute_loss(dict(batch, action=batch["action"][:, :3]))
    with pytest.raises(
        ValueError, match=r"'observation.state' must have shape \(B, n_obs_steps, state_dim\)"
    ):
        policy.compute_loss(dict(batch, **{"observation.state": batch["observation.state"][..., :4]}))
    with pytest.raises(ValueError, match="'task' must be a list of 6"):
        policy.compute_loss(dict(batch, task=batch["task"][:2]))
    with pytest.raises(ValueError, match="unknown task 'fly away'"):
        policy.compute_loss(dict(batch, task=["fly away"] * 6))


def test_overfits_one_batch():
    torch.manual_seed(0)
    policy = tiny_policy()
    batch = make_batch(policy.config, batch=16)

    def eval_loss() -> float:
        policy.eval()
        with torch.no_grad():
            # Same sigmas and noise every time, so the two numbers are comparable.
            loss = sum(policy.compute_loss(batch, generator=generator(s))[1]["diffusion"] for s in range(8))
        policy.train()
        return float(loss) / 8

    before = eval_loss()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    # No time limit: timing belongs to benchmarks/ (this machine is too noisy for a timed unit test).
    assert after < 0.5 * before, (before, after)


# Inference --------------------------------------------------------------------------------------------
def test_predict_shape_range_and_reproducibility():
    policy = tiny_policy().eval()
    obs = make_obs(policy.config, batch=3)
    chunk = policy.predict_action_chunk(obs, generator=generator(1))
    assert chunk.shape == (3, policy.config.chunk_size, policy.config.action_dim)
    stats = tiny_stats()["action"]
    low, high = torch.tensor(stats["min"]).float(), torch.tensor(stats["max"]).float()
    assert (chunk >= low - 1e-5).all() and (chunk <= high + 1e-5).all()  # unnormalised, clipped to the data
    torch.testing.assert_close(
        policy.predict_action_chunk(obs, generator=generator(1)), chunk, rtol=0, atol=0
    )
    assert not torch.equal(policy.predict_action_chunk(obs, generator=generator(2)), chunk)
    # (B, 1, state_dim) and (B, state_dim) are the same observation when n_obs_steps == 1.
    history = dict(obs, **{"observation.state": obs["observation.state"].unsqueeze(1)})
    torch.testing.assert_close(policy.predict_action_chunk(history, generator=generator(1)), chunk)


def test_predict_restores_training_mode():
    policy = tiny_policy().train()
    policy.predict_action_chunk(make_obs(policy.config))
    assert policy.training and policy.denoiser.training


def test_cached_and_uncached_sampling_agree():
    policy = tiny_policy().eval()
    obs = make_obs(policy.config, batch=4)
    cached = policy.predict_action_chunk(obs, generator=generator(3))
    assert policy.denoiser._expert_cache is not None  # the cache was used (on by default)
    policy.config.use_expert_cache = False
    uncached = policy.predict_action_chunk(obs, generator=generator(3))
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


def test_select_action_predicts_once_per_n_action_steps(monkeypatch):
    policy = tiny_policy(n_action_steps=3).eval()
    calls = []
    original = policy.predict_action_chunk

    def counting(obs, **kwargs):
        chunk = original(obs, **kwargs)
        calls.append(chunk)
        return chunk

    monkeypatch.setattr(policy, "predict_action_chunk", counting)
    obs = make_obs(policy.config, batch=2)
    actions = [policy.select_action(obs) for _ in range(7)]
    assert len(calls) == 3  # steps 1, 4 and 7
    assert actions[0].shape == (2, policy.config.action_dim)
    for i, action in enumerate(actions):
        torch.testing.assert_close(action, calls[i // 3][:, i % 3])
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == 4  # reset empties the action queue


def test_select_action_keeps_the_observation_history(monkeypatch):
    policy = tiny_policy(n_obs_steps=2, n_action_steps=1).eval()
    seen = []
    original = policy.predict_action_chunk
    monkeypatch.setattr(
        policy,
        "predict_action_chunk",
        lambda obs, **kw: seen.append(obs["observation.state"]) or original(obs, **kw),
    )
    states = [torch.full((1, policy.config.state_dim), float(i)) for i in range(3)]
    for state in states:
        policy.select_action({"observation.state": state, "task": [TASKS[0]]})
    assert [h[0, :, 0].tolist() for h in seen] == [[0.0, 0.0], [0.0, 1.0], [1.0, 2.0]]
    policy.reset()
    policy.select_action({"observation.state": states[2], "task": [TASKS[0]]})
    assert seen[-1][0, :, 0].tolist() == [2.0, 2.0]  # after reset the first state fills the history
    with pytest.raises(ValueError, match="batch size changed"):
        policy.select_action({"observation.state": torch.zeros(3, policy.config.state_dim), "task": TASKS})


def test_inference_inputs_are_validated():
    policy = tiny_policy().eval()
    state = torch.zeros(2, policy.config.state_dim)
    with pytest.raises(ValueError, match=r"'observation.state' must have shape \(B, 1, 5\) or \(B, 5\)"):
        policy.predict_action_chunk({"observation.state": torch.zeros(2, 7), "task": TASKS[:2]})
    nan = state.clone()
    nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"'observation.state' contains NaN"):
        policy.predict_action_chunk({"observation.state": nan, "task": TASKS[:2]})
    with pytest.raises(ValueError, match=r"'observation.state' contains NaN"):
        policy.select_action({"observation.state": nan, "task": TASKS[:2]})
    with pytest.raises(ValueError, match=r"select_action takes 'observation.state' .* \(B, state_dim=5\)"):
        policy.select_action({"observation.state": state.unsqueeze(1), "task": TASKS[:2]})
    with pytest.raises(KeyError, match="no 'task'"):
        policy.predict_action_chunk({"observation.state": state})
    with pytest.raises(KeyError, match=r"no 'observation.state'"):
        policy.predict_action_chunk({"task": TASKS[:2]})
    # A single instruction string applies to every row.
    assert policy.predict_action_chunk({"observation.state": state, "task": TASKS[0]}).shape[0] == 2


def test_untrained_statistics_are_reported():
    policy = MoDEPolicy(tiny_config())
    with pytest.raises(RuntimeError, match=r"no statistics for 'observation.state'"):
        policy.compute_loss(make_batch(policy.config))


# Saving and loading -----------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_actions(tmp_path):
    policy = tiny_policy()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)  # move off the initialisation
    loss, _ = policy.compute_loss(make_batch(policy.config))
    loss.backward()
    optimizer.step()
    policy.eval()
    obs = make_obs(policy.config, batch=3)
    expected = policy.predict_action_chunk(obs, generator=generator(5))

    directory = policy.save_pretrained(tmp_path / "policy")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors", "stats.json"]
    assert json.loads((directory / "stats.json").read_text())["action"]["max"] == [1.0, 3.0]
    loaded = MoDEPolicy.from_pretrained(directory)
    assert not loaded.training
    assert loaded.config == policy.config
    assert loaded.language_encoder.tasks == TASKS
    torch.testing.assert_close(
        loaded.predict_action_chunk(obs, generator=generator(5)), expected, rtol=0, atol=0
    )
    assert not any("language" in key for key in loaded.state_dict())
    assert loaded.parameter_counts() == policy.parameter_counts()


def test_from_pretrained_reports_missing_and_mismatched_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no policy directory"):
        MoDEPolicy.from_pretrained(tmp_path / "nothing")
    directory = tiny_policy().save_pretrained(tmp_path / "policy")
    (directory / "stats.json").rename(tmp_path / "stats.json")
    with pytest.raises(FileNotFoundError, match=r"has no stats.json"):
        MoDEPolicy.from_pretrained(directory)
    (tmp_path / "stats.json").rename(directory / "stats.json")

    config = json.loads((directory / "config.json").read_text())
    config["denoiser"]["width"] = 64
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not match .*config.json"):
        MoDEPolicy.from_pretrained(directory)
    config["denoiser"]["width"], config["denoiser"]["depth"] = 32, 3
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected|missing"):
        MoDEPolicy.from_pretrained(directory)
    config["denoiser"]["depth"] = 2
    (directory / "config.json").write_text(json.dumps(config))

    stats = json.loads((directory / "stats.json").read_text())
    stats["action"]["max"] = [9.0, 9.0]
    (directory / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"stats.json disagrees"):
        MoDEPolicy.from_pretrained(directory)


def test_deepcopy_shares_the_frozen_encoder_and_copies_the_weights():
    policy = tiny_policy()
    copy = deepcopy(policy)
    assert copy.language_encoder is policy.language_encoder
    assert copy.denoiser.network.head.weight is not policy.denoiser.network.head.weight


def test_minilm_policy_builds_without_loading_the_language_model():
    config = tiny_config(language_encoder="minilm", tasks=[])
    policy = MoDEPolicy(config, tiny_stats())
    assert config.denoiser.goal_dim == 384 and policy.denoiser.config.goal_dim == 384
    assert not policy.language_encoder.loaded


@pytest.mark.parametrize(
    "denoiser",
    [
        CNNDenoiserConfig(down_dims=[16, 32], n_groups=4, cond_embed_dim=16, goal_dropout=0.0),
        MoDEConfig(width=32, depth=2, heads=4, router_input="task", goal_dropout=0.0),
        MoDEConfig(
            width=32, depth=2, heads=4, router_input="stage", stage_boundaries=[1.0], num_experts=2, top_k=1
        ),
    ],
    ids=["cnn", "task_routing", "stage"],
)
def test_policy_with_other_denoisers_trains_saves_and_reloads(denoiser, tmp_path):
    policy = tiny_policy(denoiser=denoiser)
    loss, _ = policy.compute_loss(make_batch(policy.config))
    loss.backward()
    policy.save_pretrained(tmp_path)
    reloaded = MoDEPolicy.from_pretrained(tmp_path)
    assert type(reloaded.denoiser) is type(policy.denoiser)
    obs = {"observation.state": torch.zeros(2, STATE_DIM), "task": [TASKS[0], TASKS[1]]}
    first = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    second = reloaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, second, atol=0, rtol=0)
