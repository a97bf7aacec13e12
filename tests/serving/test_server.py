"""The policy server on 127.0.0.1: round trip, batching, token, bad messages, restart, ONNX policies."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from mode_policy.serving import PolicyClient, PolicyServer, ServerError
from mode_policy.serving.protocol import VERSION, decode, encode
from tests.serving.common import TOKEN, observation, served_policy


@pytest.fixture(scope="module")
def policy():
    return served_policy()


@pytest.fixture(scope="module")
def server(policy):
    with PolicyServer(policy, port=0, batch_window_ms=30.0) as running:
        yield running


def expected_chunk(policy, obs: dict, task: str, seed: int, prefix=None) -> np.ndarray:
    noise = policy.noise_spec.draw(1, torch.Generator().manual_seed(seed), "cpu", torch.float32)
    batch = {key: torch.from_numpy(value)[None] for key, value in obs.items()}
    options = {} if prefix is None else {"prefix": torch.from_numpy(prefix)[None]}
    return policy.predict_action_chunk({**batch, "task": [task]}, noise=noise, **options)[0].numpy()


def test_a_chunk_comes_back_equal_to_the_policy_with_the_same_noise(server, policy):
    with PolicyClient(server.url) as client:
        task = client.metadata["tasks"][1]
        chunk = client.infer(observation(policy), task=task, seed=11)
        assert chunk.shape == (policy.config.chunk_size, policy.config.action_dim)
        np.testing.assert_allclose(chunk, expected_chunk(policy, observation(policy), task, 11), atol=1e-6)
        timing = client.last_timing
        assert {"queue_ms", "inference_ms", "serialize_ms", "batch"} <= set(timing)
        by_index = client.infer(observation(policy), task_index=1, seed=11)
        np.testing.assert_array_equal(by_index, chunk)
        health = client.health()
        assert health["ok"] and health["served"] >= 2


def test_metadata_describes_the_policy(server, policy):
    with PolicyClient(server.url) as client:
        meta = client.metadata
    config = policy.config
    assert meta["version"] == VERSION and meta["policy_type"] == "mode"
    assert meta["chunk_size"] == config.chunk_size and meta["action_dim"] == config.action_dim
    assert meta["observation"]["observation.state"]["shape"] == [config.n_obs_steps, config.state_dim]
    assert meta["tasks"] == list(config.tasks) and meta["inpainting"] and meta["seeded"]


def test_concurrent_clients_are_batched_and_each_gets_its_own_actions(server, policy):
    clients = 6
    barrier = threading.Barrier(clients)
    results: dict[int, tuple] = {}

    def robot(i: int) -> None:
        with PolicyClient(server.url) as client:
            barrier.wait()
            for round_ in range(3):
                seed = 100 * i + round_
                chunk = client.infer(
                    observation(policy, seed), task=client.metadata["tasks"][i % 3], seed=seed
                )
                results[(i, round_)] = (chunk, client.last_timing["batch"])

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 * clients
    assert max(batch for _, batch in results.values()) > 1  # some requests shared a forward pass
    tasks = list(policy.config.tasks)
    for (i, round_), (chunk, _) in results.items():
        seed = 100 * i + round_
        expected = expected_chunk(policy, observation(policy, seed), tasks[i % 3], seed)
        np.testing.assert_allclose(chunk, expected, atol=1e-5)


def test_a_prefix_is_held_by_the_server(server, policy):
    committed = np.full((2, policy.config.action_dim), 0.25, np.float32)
    with PolicyClient(server.url) as client:
        chunk = client.infer(observation(policy), task_index=0, prefix=committed, seed=4)
    np.testing.assert_allclose(chunk[:2], committed, atol=1e-4)
    expected = expected_chunk(policy, observation(policy), policy.config.tasks[0], 4, committed)
    np.testing.assert_allclose(chunk, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"observation": {"observation.state": np.zeros(3, np.float32)}}, "observation.state"),
        ({"observation": {"observation.state": np.full(5, np.nan, np.float32)}}, "NaN"),
        ({"observation": {"observation.state": np.zeros(5, np.float32), "extra": np.zeros(1)}}, "unknown"),
        ({"observation": {}}, "missing"),
        ({"task": "fly to the moon"}, "unknown task"),
        ({"task_index": 99, "task": None}, "out of range"),
        ({"prefix": np.zeros((9, 2), np.float32)}, "prefix"),
        ({"prefix": np.full((1, 2), np.inf, np.float32)}, "finite"),
    ],
)  # fmt: skip
def test_a_bad_request_gets_its_reason_and_the_connection_keeps_serving(server, policy, change, words):
    message = {"type": "infer", "id": 5, "observation": observation(policy), "task": policy.config.tasks[0]}
    message.update(change)
    message = {key: value for key, value in message.items() if value is not None}
    with connect(server.url, compression=None) as raw:
        raw.send(encode({"type": "hello", "version": VERSION}))
        assert decode(raw.recv(10))["type"] == "welcome"
        raw.send(encode(message))
        reply = decode(raw.recv(10))
        assert reply["type"] == "error" and reply["id"] == 5 and words in reply["message"]
        good = {"type": "infer", "id": 6, "observation": observation(policy), "task": policy.config.tasks[0]}
        raw.send(encode(good))
        assert decode(raw.recv(10))["type"] == "actions"


def test_anything_before_hello_is_refused_and_the_connection_closed(server):
    with connect(server.url, compression=None) as raw:
        raw.send(encode({"type": "health"}))
        reply = decode(raw.recv(10))
        assert reply["type"] == "error" and "hello first" in reply["message"]
        with pytest.raises(Exception, match=r"1008|hello refused"):
            raw.recv(10)


def test_a_token_must_be_presented_first(policy):
    with PolicyServer(policy, port=0, token=TOKEN) as guarded:
        for wrong in (None, "nope", TOKEN + "x"):
            with pytest.raises(ServerError, match="token"):
                PolicyClient(guarded.url, token=wrong, retry_s=0)
        with PolicyClient(guarded.url, token=TOKEN) as client:
            assert client.infer(observation(policy), task_index=0).shape[0] == policy.config.chunk_size


def test_oversized_and_too_frequent_messages_are_refused(policy):
    with (
        PolicyServer(policy, port=0, max_message_bytes=2000, max_rate_hz=5) as limited,
        PolicyClient(limited.url) as client,
    ):
        for values in (1000, 100_000):  # read and refused / cut off by the frame limit
            with pytest.raises(ServerError, match="larger than the server's limit"):
                client.infer({"observation.state": np.zeros(values, np.float32)}, task_index=0)
        with pytest.raises(ServerError, match="messages per second"):
            for _ in range(10):
                client.health()


def test_the_client_reconnects_when_the_server_restarts(policy):
    first = PolicyServer(policy, port=0).start()
    port = first.port
    client = PolicyClient(first.url, retry_s=20)
    before = client.infer(observation(policy), task_index=0, seed=1)
    first.stop()
    with PolicyServer(policy, port=port):
        after = client.infer(observation(policy), task_index=0, seed=1)
    client.close()
    np.testing.assert_array_equal(before, after)
    assert client.reconnects == 1


def test_an_exported_onnx_policy_is_served_alike(tmp_path, policy):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mode_policy.runtime import OnnxPolicy, export_onnx

    export_onnx(policy, tmp_path / "p.onnx", dynamic_batch=True)
    exported = OnnxPolicy(tmp_path / "p.onnx")
    with (
        PolicyServer(exported, port=0, batch_window_ms=0) as onnx_server,
        PolicyClient(onnx_server.url) as client,
    ):
        assert client.metadata["policy_type"] == "onnx" and not client.metadata["inpainting"]
        chunk = client.infer(observation(policy), task_index=2, seed=9)
        with pytest.raises(ServerError, match="cannot hold a prefix"):
            client.infer(observation(policy), task_index=2, prefix=np.zeros((1, 2), np.float32))
    expected = expected_chunk(policy, observation(policy), policy.config.tasks[2], 9)
    np.testing.assert_allclose(chunk, expected, atol=1e-4)


def test_a_policy_that_fails_gets_an_error_reply_and_the_server_goes_on(monkeypatch):
    policy = served_policy()
    original = policy.predict_action_chunk

    def flaky(obs, **options):
        if obs["task"][0] == policy.config.tasks[2]:
            raise TypeError("a bug in the policy")
        return original(obs, **options)

    with (
        PolicyServer(policy, port=0, batch_window_ms=0) as flaky_server,
        PolicyClient(flaky_server.url) as client,
    ):
        monkeypatch.setattr(policy, "predict_action_chunk", flaky)
        with pytest.raises(ServerError, match=r"the policy failed on this request \(TypeError: a bug"):
            client.infer(observation(policy), task_index=2)
        assert client.infer(observation(policy), task_index=0).shape[0] == policy.config.chunk_size
