"""AsyncActionStream against a scripted client (exact blending arithmetic) and against a real server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mode_policy.serving import AsyncActionStream, PolicyServer
from tests.serving.common import observation, served_policy

CHUNK, ACTION_DIM, N_ACTION = 6, 1, 3


class ScriptedClient:
    """Request r returns a chunk whose every action is r + 1, or seed + 1 for a seeded request (and, with
    a prefix, the prefix first)."""

    url = "scripted://"

    def __init__(self, delay_s: float = 0.0, inpainting: bool = True) -> None:
        self.metadata = {"chunk_size": CHUNK, "n_action_steps": N_ACTION, "n_obs_steps": 1,
                         "inpainting": inpainting, "policy_type": "scripted"}  # fmt: skip
        self.delay_s, self.requests, self.prefixes, self.reconnects = delay_s, 0, [], 0

    def infer(self, observation, task=None, *, task_index=None, prefix=None, seed=None):
        time.sleep(self.delay_s)
        self.requests += 1
        self.prefixes.append(None if prefix is None else prefix.copy())
        value = self.requests if seed is None else seed + 1  # a seed tells the requests of copies apart
        chunk = np.full((CHUNK, ACTION_DIM), float(value), np.float32)
        if prefix is not None:
            chunk[: len(prefix)] = prefix
        return chunk

    def copy(self) -> ScriptedClient:
        return ScriptedClient(self.delay_s, self.metadata["inpainting"])

    def close(self) -> None:
        pass


def run(stream: AsyncActionStream, steps: int) -> list[float]:
    return [float(stream.act({"observation.state": np.zeros(2, np.float32)})[0]) for _ in range(steps)]


def test_weighted_blend_drops_the_past_and_mixes_the_overlap():
    stream = AsyncActionStream(ScriptedClient(), task="t", blend="weighted", threshold=4, delay_steps=1)
    actions = run(stream, 6)
    # t0: chunk 1 for steps 0-5 (the first chunk is waited for); queue < 4 after step 2 -> request at t=3,
    # due at t=4: its step 3 is past (dropped), steps 4-5 overlap: 0.3 * 1 + 0.7 * 2.
    assert actions[:4] == [1.0, 1.0, 1.0, 1.0]
    assert actions[4:] == pytest.approx([1.7, 1.7])
    assert stream.stats["dropped"] == 1 and stream.stats["starved"] == 0


def test_crossfade_rises_linearly_over_the_overlap():
    stream = AsyncActionStream(ScriptedClient(), task="t", blend="crossfade", threshold=5, delay_steps=1)
    actions = run(stream, 6)
    # request at t=2 (3 left < 5), due t=3: overlap steps 3, 4, 5 with weights 1/4, 2/4, 3/4 of the new;
    # the next request (t=4, due t=5) fades step 5 once more: 3/4 * 1.75 + 1/4 * 3.
    assert actions[3:6] == pytest.approx([1.25, 1.5, 0.75 * 1.75 + 0.25 * 3])


def test_inpainting_sends_the_committed_actions_and_never_changes_them():
    client = ScriptedClient()
    stream = AsyncActionStream(client, task="t", blend="inpaint", threshold=4, delay_steps=2)
    actions = run(stream, 30)
    assert client.prefixes[0] is None  # nothing committed yet
    assert all(p is not None and len(p) >= 1 for p in client.prefixes[1:])
    # Each hand-over continues the queue (the scripted server holds the prefix exactly): the executed
    # actions only ever step from chunk r's value to r + 1's, never back to an older one or a blend.
    jumps = np.diff(actions)
    assert set(np.unique(jumps)) <= {0.0, 1.0} and jumps.sum() == actions[-1] - actions[0] > 3


def test_sync_mode_waits_for_each_chunk_and_runs_n_action_steps():
    client = ScriptedClient()
    stream = AsyncActionStream(client, task="t", mode="sync", delay_steps=3)
    actions = run(stream, 9)
    assert actions == [1.0] * 3 + [2.0] * 3 + [3.0] * 3 and client.requests == 3


def test_act_never_waits_after_the_first_chunk_on_a_slow_link():
    client = ScriptedClient(delay_s=0.3)
    stream = AsyncActionStream(client, task="t", blend="latest", threshold=5)
    run(stream, 1)  # waits for the first chunk
    began = time.perf_counter()
    run(stream, 20)
    assert time.perf_counter() - began < 0.25  # 20 control steps while a 0.3 s request is out
    assert stream.stats["starved"] > 0
    stream.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="blend"):
        AsyncActionStream(ScriptedClient(), task="t", blend="smooth")
    with pytest.raises(ValueError, match="threshold"):
        AsyncActionStream(ScriptedClient(), task="t", threshold=CHUNK + 1)
    with pytest.raises(ValueError, match="cannot inpaint"):
        AsyncActionStream(ScriptedClient(inpainting=False), task="t")
    with pytest.raises(ValueError, match="exactly one"):
        AsyncActionStream(ScriptedClient())


def test_a_stream_against_a_real_server_holds_its_committed_actions():
    policy = served_policy()
    with PolicyServer(policy, port=0) as server:
        stream = AsyncActionStream(server.url, task=policy.config.tasks[0], blend="inpaint", seed=3,
                                   threshold=3, delay_steps=1)  # fmt: skip
        executed, queued = [], {}

        def snapshot() -> None:
            with stream._lock:
                for s, action in stream._queue.items():
                    queued.setdefault(s, action.copy())

        for step in range(12):
            stream.observe(observation(policy, step))
            snapshot()
            executed.append(stream.take())
            snapshot()
        stream.close()
    checked = [step for step in range(12) if step in queued]
    assert len(checked) >= 10
    for step in checked:
        np.testing.assert_allclose(executed[step], queued[step], atol=1e-4)  # what was queued is what ran
    assert stream.stats["requests"] >= 3 and stream.stats["errors"] == 0


def test_a_refused_request_is_raised_in_the_robot_loop():
    policy = served_policy()
    with PolicyServer(policy, port=0) as server:
        stream = AsyncActionStream(server.url, task="not a training task")
        with pytest.raises(ValueError, match="unknown task"):
            stream.act(observation(policy))
        stream.close()
    assert threading.active_count() < 50


def test_two_requests_in_flight_keep_the_queue_full_when_the_delay_exceeds_half_a_chunk():
    starved = {}
    for in_flight in (1, 2):
        client = ScriptedClient()
        stream = AsyncActionStream(client, task="t", blend="latest", threshold=5, delay_steps=4,
                                   max_in_flight=in_flight)  # fmt: skip
        run(stream, 40)
        starved[in_flight] = stream.stats["starved"]
    # One at a time: each chunk of 6 brings 6 - 4 = 2 new actions per 4 steps, so the queue runs dry.
    assert starved[1] > 10 and starved[2] == 0


def test_a_threshold_of_the_chunk_size_asks_at_every_step():
    client = ScriptedClient()
    stream = AsyncActionStream(client, task="t", blend="latest", threshold=CHUNK, delay_steps=2,
                               max_in_flight=2, seed=0)  # fmt: skip
    actions = run(stream, 20)
    # Every step sends one request and every reply lands 2 steps later, so from step 2 on the action run
    # at step t comes from the request sent at t - 2 (request r, the r-th from 0, carries seed r).
    assert stream.stats["requests"] == 20 and stream.stats["starved"] == 0
    assert actions[2:] == [float(t - 2 + 1) for t in range(2, 20)]


@pytest.mark.parametrize(("delay", "replan"), [(1, 1), (2, 1), (2, 2), (2, 4), (3, 3), (4, 2)])
def test_the_served_evaluations_schedule_replans_every_r_steps_and_never_runs_dry(delay, replan):
    from mode_policy.serving.evaluate import _request_schedule

    threshold, in_flight = _request_schedule(CHUNK, delay, replan)
    stream = AsyncActionStream(ScriptedClient(), task="t", blend="latest", threshold=threshold,
                               delay_steps=delay, max_in_flight=in_flight)  # fmt: skip
    run(stream, 60)
    effective = min(replan, CHUNK - delay)  # cut so that each reply lands before the queue runs dry
    assert stream.stats["starved"] == 0
    assert abs(stream.stats["requests"] - 60 / effective) <= 2


def test_the_stream_keeps_acting_through_a_server_restart():
    policy = served_policy()
    first = PolicyServer(policy, port=0).start()
    port = first.port
    stream = AsyncActionStream(first.url, task_index=0, blend="latest", threshold=3)
    for _ in range(3):
        stream.act(observation(policy))
    first.stop()
    began = time.perf_counter()
    for _ in range(20):  # no server: every act still returns at once, holding the last action
        stream.act(observation(policy))
    assert time.perf_counter() - began < 1.0 and stream.stats["starved"] > 0
    with PolicyServer(policy, port=port):
        requests = stream.stats["requests"]
        deadline = time.monotonic() + 20
        while stream.stats["requests"] < requests + 2 and time.monotonic() < deadline:
            stream.act(observation(policy))
            time.sleep(0.02)
        assert stream.stats["reconnects"] >= 1 and stream.stats["requests"] >= requests + 2
    stream.close()
