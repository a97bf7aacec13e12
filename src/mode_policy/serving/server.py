"""PolicyServer: a policy (torch or exported ONNX) behind a websocket, batching its clients' requests.

server = PolicyServer(load_policy("mt10-mode-small"), port=8765, token="s3cret")
server.run()                      # blocking (mode-policy serve); or `with server.start(): ...` (a thread)

Each connection says ``hello`` first (with the token, when the server has one); then every ``infer``
is checked on its own (fields, shapes, dtypes, NaN, task), queued, and answered with its own chunk.
Requests that arrive within ``batch_window_ms`` of each other, or while the policy is busy, run as one
forward pass (MoDE's expert cache is batch-agnostic); a request's noise is drawn for it alone (from its
``seed`` or the server's generator), so its actions do not depend on who it was batched with. One thread
runs the policy; the event loop only reads, checks and replies, so a slow or hostile client delays no one.
A bad message gets an ``error`` reply naming the problem and the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import itertools
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mode_policy.keys import STATE_KEY, TASK_KEY
from mode_policy.serving.protocol import (
    DEFAULT_PORT,
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    MAX_RATE_HZ,
    VERSION,
    WINDOW_MS,
    ProtocolError,
    check_client_message,
    decode,
    encode,
    encode_entries,
    error,
    join_entries,
)


@dataclass
class _Request:
    """One checked infer request waiting for the policy."""

    id: int
    send: Any  # coroutine function: reply bytes -> None
    observation: dict[str, np.ndarray]  # one sample: {key: (n_obs_steps, ...)}
    task: str
    prefix: np.ndarray | None  # (k, action_dim), data units
    noise: np.ndarray | None  # the sample's own noise, or None when the policy draws it
    arrived: float
    key: tuple = field(default=())  # requests with equal keys can share a forward pass


class PolicyServer:
    """Serves ``policy`` (anything with ``predict_action_chunk``) over websockets + msgpack.

    host: 127.0.0.1 by default (this machine only); bind 0.0.0.0 only with a ``token``. port 0 picks a
    free port (``self.port`` after start). batch_window_ms / max_batch bound the batching; max_message_bytes
    and max_rate_hz bound what one connection may send. control_hz: the robot's control rate, reported
    to clients in the metadata (None: unknown). seed: the generator of requests that bring no seed.
    """

    def __init__(
        self,
        policy: Any,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        batch_window_ms: float = WINDOW_MS,
        max_batch: int = MAX_BATCH,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_rate_hz: float = MAX_RATE_HZ,
        control_hz: float | None = None,
        seed: int = 0,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("the token must be a non-empty string (e.g. from `openssl rand -hex 16`)")
        for name, value in (("max_batch", max_batch), ("max_message_bytes", max_message_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not batch_window_ms >= 0 or not max_rate_hz > 0:
            raise ValueError("batch_window_ms must be >= 0 and max_rate_hz > 0")
        self.policy = policy.eval() if isinstance(policy, torch.nn.Module) else policy
        self.host, self.port, self.token = host, port, token
        self.window = batch_window_ms / 1000
        self.max_batch, self.max_message_bytes, self.max_rate_hz = max_batch, max_message_bytes, max_rate_hz
        parameters = inspect.signature(policy.predict_action_chunk).parameters
        self.noise_spec = getattr(policy, "noise_spec", None) if "noise" in parameters else None
        self.inpainting = "prefix" in parameters
        self.tasks = list(getattr(policy, "tasks", None) or policy.config.tasks)
        self.metadata = self._metadata(control_hz)
        self.generator = torch.Generator().manual_seed(seed)
        self.served = 0
        self._started = time.monotonic()
        self._queue: asyncio.Queue[_Request] | None = None
        self._replies: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._inline: queue.Queue | None = None  # run(): (group, future) for the main thread
        self._failure: OSError | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # Running --------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until interrupted (Ctrl-C). The policy runs in this (the main) thread and the network in a
        background one: torch's CPU thread pool runs a small model about twice as slowly when it is
        called from a second thread while the main thread's pool idles (measured; benchmarks/RESULTS.md)."""
        self._inline = queue.Queue()
        ready = threading.Event()
        network = threading.Thread(target=self._network, args=(ready,), daemon=True)
        network.start()
        ready.wait(30)
        try:
            while network.is_alive():
                try:
                    group, future = self._inline.get(timeout=0.2)
                except queue.Empty:
                    continue
                future.set_result(self._infer(group))
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            self._executor.shutdown(wait=False)
        if self._failure is not None:
            raise self._failure

    def start(self) -> PolicyServer:
        """Serve from a background thread; returns once the port is open (use as a context manager)."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._network, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30) or self._failure is not None:
            raise self._failure or RuntimeError(f"the policy server did not start on {self.host}:{self.port}")
        return self

    def _network(self, ready: threading.Event) -> None:
        """The event loop, all the thread's life; a failure to serve (a port in use) waits for the caller."""
        try:
            asyncio.run(self._serve(ready))
        except OSError as problem:
            self._failure = OSError(f"cannot serve on {self.host}:{self.port}: {problem.strerror or problem}")
        finally:
            ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already (it failed to serve)
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> PolicyServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _serve(self, ready: threading.Event) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._stop = asyncio.Event()
        batcher = asyncio.create_task(self._batcher())
        try:
            async with serve(
                self._connection, self.host, self.port, max_size=4 * self.max_message_bytes,
                compression=None, max_queue=64,
            ) as server:  # fmt: skip
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await self._stop.wait()
        finally:
            batcher.cancel()
            ready.set()

    # One connection --------------------------------------------------------------------------------------
    async def _connection(self, websocket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        async def send(message: dict[str, Any] | bytes) -> None:
            with contextlib.suppress(ConnectionClosed):  # a client that left: its reply has nowhere to go
                await websocket.send(message if isinstance(message, bytes) else encode(message))

        allowance, last = self.max_rate_hz, time.monotonic()  # a token bucket of one second's messages
        greeted = False
        try:
            async for data in websocket:
                arrived = time.perf_counter()
                now = time.monotonic()
                allowance = min(self.max_rate_hz, allowance + (now - last) * self.max_rate_hz)
                last = now
                if allowance < 1:
                    await send(error(f"more than {self.max_rate_hz:g} messages per second; slow down"))
                    continue
                allowance -= 1
                try:
                    if len(data) > self.max_message_bytes:
                        raise ProtocolError(
                            f"a message of {len(data)} bytes is larger than the server's limit of "
                            f"{self.max_message_bytes} (start the server with a larger --max-message-bytes)"
                        )
                    message = check_client_message(decode(data))
                    if not greeted:
                        await send(self._hello(message))
                        greeted = True
                    else:
                        await self._dispatch(message, send, arrived)
                except ProtocolError as problem:
                    await send(error(str(problem), _id_of(data)))
                    if not greeted:
                        await websocket.close(1008, "hello refused")
                        return
        except ConnectionClosed:
            pass

    def _hello(self, message: dict[str, Any]) -> dict[str, Any]:
        if message["type"] != "hello":
            raise ProtocolError(
                f"say hello first (with the token, if the server has one), got {message['type']}"
            )
        if self.token is not None:
            given = message.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise ProtocolError("wrong or missing token: pass the server's token (--token-file) in hello")
        if message["version"] != VERSION:
            raise ProtocolError(
                f"protocol version {message['version']} is not served; this server speaks {VERSION}"
            )
        return {"type": "welcome", "version": VERSION, "metadata": self.metadata}

    async def _dispatch(self, message: dict[str, Any], send: Any, arrived: float) -> None:
        kind, request_id = message["type"], message.get("id")
        reply: dict[str, Any] = {"type": kind} if request_id is None else {"type": kind, "id": request_id}
        if kind == "infer":
            await self._queue.put(self._request(message, send, arrived))
            return
        if kind == "hello":
            raise ProtocolError("hello was already said on this connection")
        if kind == "metadata":
            reply["metadata"] = self.metadata
        elif kind == "health":
            reply.update(
                ok=True, served=self.served, queued=self._queue.qsize(),
                uptime_s=round(time.monotonic() - self._started, 3),
            )  # fmt: skip
        await send(reply)

    def _request(self, message: dict[str, Any], send: Any, arrived: float) -> _Request:
        """An infer message checked as the policy would check it, so that one bad row cannot fail a batch."""
        observation = message["observation"]
        expected = self.policy.observation_keys
        unknown, missing = sorted(set(observation) - set(expected)), sorted(set(expected) - set(observation))
        if unknown or missing:
            raise ProtocolError(
                f"infer observation must have exactly the keys {expected}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
            )
        try:
            batched = {key: value[None] for key, value in observation.items()}
            checked = self.policy.check_observation(batched)  # {key: (1, n_obs_steps, ...)}
        except (KeyError, ValueError) as problem:
            raise ProtocolError(f"infer observation: {_text(problem)}") from None
        observation = {key: value[0].cpu().numpy() for key, value in checked.items()}
        task = self._task(message)
        prefix = self._prefix(message.get("prefix"))
        noise = self._noise(message.get("seed"))
        key = (
            tuple((k, v.shape, v.dtype.str) for k, v in sorted(observation.items())),
            None if prefix is None else prefix.shape,
        )
        return _Request(message["id"], send, observation, task, prefix, noise, arrived, key)

    def _task(self, message: dict[str, Any]) -> str:
        if "task_index" in message:
            index = message["task_index"]
            if not 0 <= index < len(self.tasks):
                raise ProtocolError(
                    f"task_index {index} is out of range: this policy knows {len(self.tasks)} task(s) "
                    "(see metadata 'tasks')"
                )
            return self.tasks[index]
        if self.tasks and message["task"] not in self.tasks:
            shown = ", ".join(repr(t) for t in self.tasks[:3]) + (" ..." if len(self.tasks) > 3 else "")
            raise ProtocolError(
                f"unknown task {message['task']!r}; this policy was trained on {len(self.tasks)} task(s) "
                f"({shown}): send one of metadata 'tasks', or its task_index"
            )
        return message["task"]

    def _prefix(self, prefix: np.ndarray | None) -> np.ndarray | None:
        if prefix is None:
            return None
        if not self.inpainting:
            raise ProtocolError(
                f"this {self.metadata['policy_type']} policy cannot hold a prefix (only a diffusion sampler "
                "can inpaint); leave 'prefix' out and blend chunks on the robot instead"
            )
        chunk, action_dim = self.metadata["chunk_size"], self.metadata["action_dim"]
        if prefix.ndim != 2 or prefix.shape[1] != action_dim or not 1 <= prefix.shape[0] <= chunk:
            raise ProtocolError(
                f"infer 'prefix' must have shape (k, {action_dim}) with 1 <= k <= {chunk}, got {prefix.shape}"
            )
        if prefix.dtype.kind != "f" or not np.isfinite(prefix).all():
            raise ProtocolError("infer 'prefix' must hold finite float actions (no NaN or inf)")
        return prefix.astype(np.float32)

    def _noise(self, seed: int | None) -> np.ndarray | None:
        if self.noise_spec is None:
            if seed is not None:
                raise ProtocolError(
                    f"this {self.metadata['policy_type']} policy draws its own noise; leave 'seed' out"
                )
            return None
        generator = self.generator if seed is None else torch.Generator().manual_seed(seed)
        return self.noise_spec.draw(1, generator, "cpu", torch.float32)[0].numpy()

    # Batching -------------------------------------------------------------------------------------------
    async def _batcher(self) -> None:
        """Collect requests (the first waits ``window`` for others; those queued meanwhile join), run
        each group of alike requests as one forward pass in the policy thread, reply to each client."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch.sort(key=lambda r: repr(r.key))
            for _, group in itertools.groupby(batch, key=lambda r: repr(r.key)):
                group = list(group)
                started = time.perf_counter()
                if self._inline is not None:  # run(): the main thread runs the policy
                    future: Future = Future()
                    self._inline.put((group, future))
                    outcomes = await asyncio.wrap_future(future)
                else:  # start(): the policy thread
                    outcomes = await loop.run_in_executor(self._executor, self._infer, group)
                finished = time.perf_counter()
                for request, outcome in zip(group, outcomes, strict=True):
                    reply = loop.create_task(self._reply(request, outcome, started, finished, len(group)))
                    self._replies.add(reply)  # the loop keeps only weak references to its tasks
                    reply.add_done_callback(self._replies.discard)

    def _infer(self, group: list[_Request]) -> list[np.ndarray | str]:
        """Actions (chunk, action_dim) per request, or an error text; a failing batch is retried row by row
        so that only the request at fault gets the error."""
        try:
            actions = self._forward(group)
            return list(actions)
        except Exception as problem:  # whatever the policy raises, the server answers and goes on
            if len(group) > 1:
                return [self._infer([request])[0] for request in group]
            if isinstance(problem, (ValueError, KeyError)):  # the policy's own input checks
                return [_text(problem)]
            return [f"the policy failed on this request ({type(problem).__name__}: {_text(problem)})"]

    @torch.no_grad()
    def _forward(self, group: list[_Request]) -> np.ndarray:
        first = group[0]
        obs: dict[str, Any] = {
            key: torch.from_numpy(np.stack([r.observation[key] for r in group])) for key in first.observation
        }
        obs[TASK_KEY] = [r.task for r in group]
        options: dict[str, Any] = {}
        if first.noise is not None:
            options["noise"] = torch.from_numpy(np.stack([r.noise for r in group]))
        if first.prefix is not None:
            options["prefix"] = torch.from_numpy(np.stack([r.prefix for r in group]))
        actions = self.policy.predict_action_chunk(obs, **options)  # (B, chunk, action_dim)
        return actions.detach().cpu().numpy().astype(np.float32)

    async def _reply(
        self, request: _Request, outcome: np.ndarray | str, started: float, finished: float, batch: int
    ) -> None:
        if isinstance(outcome, str):
            await request.send(error(outcome, request.id))
            return
        self.served += 1
        timing = {
            "queue_ms": 1000 * (started - request.arrived), "inference_ms": 1000 * (finished - started),
            "batch": batch,
        }  # fmt: skip
        reply = {"type": "actions", "id": request.id, "actions": outcome}
        encoding = time.perf_counter()
        body = encode_entries(reply)  # encoded once; the timing, which reports it, is appended after
        timing["serialize_ms"] = 1000 * (time.perf_counter() - encoding)
        await request.send(join_entries(len(reply) + 1, body, encode_entries({"timing": timing})))

    # Metadata -------------------------------------------------------------------------------------------
    def _metadata(self, control_hz: float | None) -> dict[str, Any]:
        policy, config = self.policy, self.policy.config
        steps = config.n_obs_steps
        observation = {}
        for key in policy.observation_keys:
            if key == STATE_KEY:
                observation[key] = {"shape": [steps, config.state_dim], "dtype": "float32"}
            else:
                observation[key] = {"shape": [steps, 3, *config.image_hw], "dtype": "uint8"}
        return {
            "protocol": "mode-policy", "version": VERSION, "policy_type": type(policy).name,
            "observation": observation, "action_dim": config.action_dim, "chunk_size": config.chunk_size,
            "n_action_steps": config.n_action_steps, "n_obs_steps": steps, "tasks": self.tasks,
            "control_hz": control_hz, "inpainting": self.inpainting, "seeded": self.noise_spec is not None,
            "device": str(policy.device), "max_batch": self.max_batch,
            "batch_window_ms": 1000 * self.window, "max_message_bytes": self.max_message_bytes,
        }  # fmt: skip


def _text(problem: Exception) -> str:
    """An exception's one line (a KeyError's str() adds quotes)."""
    return str(problem.args[0]) if isinstance(problem, KeyError) and problem.args else str(problem)


def _id_of(data: Any) -> int | None:
    """The request id of a message that failed its checks, when it can be read at all (for the reply)."""
    try:
        message = decode(data)
    except ProtocolError:
        return None
    request_id = message.get("id")
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None
