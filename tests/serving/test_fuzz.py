"""1,000+ malformed messages at a live server while a well-formed client beside them keeps working."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
from websockets.sync.client import connect

from mode_policy.serving import PolicyClient, PolicyServer
from mode_policy.serving.protocol import VERSION, decode, encode
from tests.serving.common import observation, served_policy

MESSAGES = 1200


def malformed(rng: np.random.Generator, good: bytes, policy) -> bytes | str:
    """One message that breaks the protocol, of a randomly chosen kind."""
    state = observation(policy)["observation.state"]
    kind = rng.integers(9)
    if kind == 0:  # random bytes
        return rng.bytes(int(rng.integers(1, 200)))
    if kind == 1:  # a valid message cut short
        return good[: int(rng.integers(1, len(good)))]
    if kind == 2:  # text frame
        return "".join(chr(int(c)) for c in rng.integers(32, 127, int(rng.integers(1, 50))))
    if kind == 3:  # wrong type of value for a field
        field = ["id", "observation", "task", "seed", "prefix"][int(rng.integers(5))]
        message = {"type": "infer", "id": 1, "observation": {"observation.state": state}, "task": "x"}
        message[field] = [None, 1.5, "text", [1, 2], {"a": 1}][int(rng.integers(5))]
        return msgpack.packb(message, default=lambda v: v.tolist())
    if kind == 4:  # arrays with lying headers
        dtype = ["<f4", "<c8", "|O", "<U4", "<f4"][int(rng.integers(5))]
        shape = [int(rng.integers(-2, 9)) for _ in range(int(rng.integers(0, 4)))]
        payload = msgpack.packb([dtype, shape, rng.bytes(int(rng.integers(0, 64)))])
        ext = msgpack.ExtType(int(rng.integers(0, 3)), payload)
        return msgpack.packb(
            {"type": "infer", "id": 2, "observation": {"observation.state": ext}, "task": "x"}
        )
    if kind == 5:  # wrong shapes, NaN, wrong dtypes for the policy
        bad = [state[:3], np.full_like(state, np.nan), state > 0, state.reshape(1, 1, -1),
               np.zeros((0,), np.float32)][int(rng.integers(5))]  # fmt: skip
        return encode({"type": "infer", "id": 3, "observation": {"observation.state": bad}, "task_index": 0})
    if kind == 6:  # unknown types and fields, unknown tasks
        obs = {"observation.state": state}
        return encode([{"type": "teleport"}, {"type": "health", "when": 1},
                       {"type": "infer", "id": 4, "observation": obs, "task": "fly"},
                       {"type": "infer", "id": 4, "observation": obs, "task_index": -3},
                       {"type": "hello", "version": VERSION}][int(rng.integers(5))])  # fmt: skip
    if kind == 7:  # deep nesting
        value: object = 1
        for _ in range(int(rng.integers(6, 300))):
            value = [value]
        return msgpack.packb({"type": "health", "id": 5, "x": value})
    return msgpack.packb(int(rng.integers(-1000, 1000)))  # not a map


def test_the_server_answers_every_malformed_message_and_keeps_serving():
    policy = served_policy()
    rng = np.random.default_rng(0)
    good = encode({"type": "infer", "id": 9, "observation": observation(policy), "task_index": 1})
    with PolicyServer(policy, port=0, max_rate_hz=1e6) as server:
        served, failures, stop = [], [], threading.Event()

        def well_formed_robot() -> None:
            with PolicyClient(server.url, timeout=10) as client:
                expected = client.infer(observation(policy), task_index=1, seed=42)
                while not stop.is_set():
                    chunk = client.infer(observation(policy), task_index=1, seed=42)
                    (served if np.allclose(chunk, expected, atol=1e-5) else failures).append(chunk)

        robot = threading.Thread(target=well_formed_robot)
        robot.start()
        errors = 0
        with connect(server.url, compression=None, max_size=None) as raw:
            raw.send(encode({"type": "hello", "version": VERSION}))
            assert decode(raw.recv(10))["type"] == "welcome"
            for _ in range(MESSAGES):
                raw.send(malformed(rng, good, policy))
                reply = decode(raw.recv(10))  # never hangs: each message gets its reply in time
                assert reply["type"] == "error" and reply["message"], reply
                errors += 1
            raw.send(good)
            assert decode(raw.recv(10))["type"] == "actions"  # the fuzzed connection itself still serves
        stop.set()
        robot.join(30)
    assert errors == MESSAGES and not failures and len(served) > 0
