"""PolicyClient: the robot's side of a policy server, with only numpy, msgpack and websockets.

client = PolicyClient("ws://gpu-box:8765", token=open("token").read().strip())
chunk = client.infer({"observation.state": state}, task="open the drawer")   # (chunk_size, action_dim)
client.metadata["chunk_size"], client.last_timing["inference_ms"]

A lost connection (the server restarting, a network hiccup) is re-opened with exponential back-off
for up to ``retry_s`` seconds before :class:`ServerUnavailable` is raised. A request the server refuses
raises :class:`ServerError` with the server's one-line reason.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mode_policy.serving.protocol import VERSION, decode, encode


class ServerError(ValueError):
    """The server refused a request; the text is its reason."""


class ServerUnavailable(ConnectionError):
    """No server answered at the URL within the retry time."""


class PolicyClient:
    """A synchronous connection to a :class:`~mode_policy.serving.PolicyServer`.

    timeout: seconds to wait for one reply. retry_s: how long to keep re-connecting after a lost
    connection (0: fail at once). Not thread-safe: give each thread its own client.
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retry_s: float = 10.0,
        name: str = "mode-policy client",
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ValueError(
                f"the server URL must start with ws:// or wss:// (e.g. ws://127.0.0.1:8765), got {url!r}"
            )
        self.url, self.token, self.timeout, self.retry_s, self.name = url, token, timeout, retry_s, name
        self.metadata: dict[str, Any] = {}
        self.last_timing: dict[str, float] = {}
        self.reconnects = 0
        self._ids = itertools.count()
        self._connection: Any = None
        self._connect()

    # Requests -----------------------------------------------------------------------------------------
    def infer(
        self,
        observation: Mapping[str, Any],
        task: str | None = None,
        *,
        task_index: int | None = None,
        prefix: Any = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """One chunk (chunk_size, action_dim) float32 for one observation (no batch axis)."""
        return self.infer_many([(observation, task, task_index, prefix, seed)])[0]

    def infer_many(self, requests: Sequence[tuple]) -> list[np.ndarray]:
        """Several (observation, task, task_index, prefix, seed) requests sent at once (the server may run
        them as one batch); their chunks in order. ``last_timing`` is the last reply's."""
        messages = [self._infer_message(*request) for request in requests]
        replies = self._exchange(messages)
        chunks = []
        for reply in replies:
            self.last_timing = reply.get("timing", {})
            chunks.append(reply["actions"])
        return chunks

    def health(self) -> dict[str, Any]:
        return self._exchange([{"type": "health", "id": next(self._ids)}])[0]

    def reset(self) -> None:
        """The protocol's reset (the server keeps no per-client state, so this only checks the link)."""
        self._exchange([{"type": "reset", "id": next(self._ids)}])

    def copy(self) -> PolicyClient:
        """Another connection to the same server, with the same settings."""
        return PolicyClient(
            self.url, token=self.token, timeout=self.timeout, retry_s=self.retry_s, name=self.name
        )

    def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Wire ---------------------------------------------------------------------------------------------
    def _infer_message(self, observation: Mapping[str, Any], task: str | None, task_index: int | None,
                       prefix: Any, seed: int | None) -> dict[str, Any]:  # fmt: skip
        if not isinstance(observation, Mapping):
            raise ValueError(
                f"the observation must be a dict of named arrays, got {type(observation).__name__}"
            )
        message: dict[str, Any] = {
            "type": "infer",
            "id": next(self._ids),
            "observation": {key: _array(value, key) for key, value in observation.items()},
        }
        if task_index is not None:
            message["task_index"] = int(task_index)
        elif task is not None:
            message["task"] = task
        if prefix is not None:
            message["prefix"] = _array(prefix, "prefix").astype(np.float32)
        if seed is not None:
            message["seed"] = int(seed)
        return message

    def _exchange(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send the messages, return their replies by id; re-connects and re-sends once on a lost link."""
        from websockets.exceptions import ConnectionClosed

        for attempt in range(2):
            try:
                for message in messages:
                    self._connection.send(encode(message))
                wanted = {message["id"]: None for message in messages}
                while any(reply is None for reply in wanted.values()):
                    reply = decode(self._connection.recv(timeout=self.timeout))
                    if reply["type"] == "error" and "id" not in reply:  # about the link, not a request
                        raise ServerError(reply["message"])
                    if reply.get("id") in wanted:
                        wanted[reply["id"]] = reply
                break
            except (ConnectionClosed, OSError, AttributeError) as problem:
                closed = getattr(problem, "rcvd", None)
                if closed is not None and closed.code == 1009:  # the server's frame size limit
                    self._connect()
                    raise ServerError(
                        "the message is larger than the server's limit of "
                        f"{self.metadata['max_message_bytes']} bytes (start the server with a larger "
                        "--max-message-bytes)"
                    ) from None
                if attempt == 1:
                    raise ServerUnavailable(f"lost the connection to {self.url} twice in a row") from None
                self._connect()
            except TimeoutError:
                raise TimeoutError(f"no reply from {self.url} within {self.timeout} s") from None
        replies = list(wanted.values())
        for reply in replies:
            if reply["type"] == "error":
                raise ServerError(reply["message"])
        return replies

    def _connect(self) -> None:
        """Open (or re-open) the connection and say hello, retrying with back-off for ``retry_s``."""
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        self.close()
        deadline, wait = time.monotonic() + self.retry_s, 0.05
        while True:
            try:
                stack = contextlib.ExitStack()
                connection = stack.enter_context(
                    connect(self.url, open_timeout=self.timeout, compression=None, max_size=None, proxy=None)
                )
                break
            except InvalidURI as problem:
                raise ValueError(f"bad server URL {self.url!r}: {problem}") from None
            except (OSError, InvalidHandshake, TimeoutError):
                if time.monotonic() + wait > deadline:
                    raise ServerUnavailable(
                        f"no policy server answers at {self.url} (start one with `mode-policy serve --policy "
                        "...`, or check the host and port)"
                    ) from None
                time.sleep(wait)
                wait = min(2 * wait, 1.0)
        hello: dict[str, Any] = {"type": "hello", "version": VERSION, "client": self.name}
        if self.token is not None:
            hello["token"] = self.token
        connection.send(encode(hello))
        reply = decode(connection.recv(timeout=self.timeout))
        if reply["type"] == "error":
            stack.close()
            raise ServerError(reply["message"])
        if self.metadata:
            self.reconnects += 1
        self.metadata = reply["metadata"]
        self._connection, self._stack = connection, stack


def _array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype.kind not in "fub" and array.dtype not in (np.int32, np.int64):
        raise ValueError(f"{name!r} must be a numeric array, got dtype {array.dtype}")
    return array
