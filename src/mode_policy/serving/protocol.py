"""The wire protocol between a policy server and a robot: msgpack maps over binary websocket frames.

Only numpy and msgpack are needed to speak it (no torch, no pickle: nothing on the wire can run code). A
numpy array travels as a msgpack extension (code ``ARRAY_EXT``) holding ``[dtype, shape, raw bytes]``,
little-endian, C order; only the dtypes in ``DTYPES`` are accepted.

Messages are maps with a ``"type"``. A connection starts with ``hello``; everything else is refused
until the server has answered it with ``welcome``.

client -> server                                       server -> client
  hello    {version, token?, client?}                    welcome  {version, metadata}
  infer    {id, observation: {key: array}, task |        actions  {id, actions (chunk, action_dim),
            task_index, prefix?: (k, action_dim),                  timing: {queue_ms, inference_ms,
            seed?}                                                 serialize_ms, batch}}
  metadata {id?}                                         metadata {id?, metadata}
  health   {id?}                                         health   {id?, ok, served, queued, uptime_s}
  reset    {id?}                                         reset    {id?}   (the server keeps no state)
                                                         error    {id?, message}

``observation`` holds one sample (no batch axis): ``observation.state`` (n_obs_steps, state_dim) or
(state_dim,) when n_obs_steps is 1, cameras (n_obs_steps, 3, H, W) uint8. ``prefix`` (data units): the
actions already committed for the chunk's first k timesteps; a diffusion policy holds them by inpainting
so the new chunk continues the old one. ``seed`` makes the sample's noise reproducible. An ``error``
names the problem; the connection stays open except after a failed ``hello``.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

VERSION = 1
DEFAULT_PORT = 8765
# A server's defaults (``mode-policy serve`` flags):
WINDOW_MS = 2.0  # how long the first request of a batch waits for company
MAX_BATCH = 64
MAX_MESSAGE_BYTES = 4 << 20  # 4 MiB: a few camera frames
MAX_RATE_HZ = 200.0  # messages per second per connection (a 50 Hz robot needs 50)
ARRAY_EXT = 1
DTYPES = ("<f4", "<f8", "<f2", "|u1", "<i4", "<i8", "|b1")  # what an observation or action may be
MAX_DEPTH = 4  # maps inside maps: an infer message needs 2

CLIENT_MESSAGES: dict[str, dict[str, tuple[type, ...]]] = {  # type -> field -> accepted Python types
    "hello": {"version": (int,), "token": (str,), "client": (str,)},
    "infer": {
        "id": (int,),
        "observation": (dict,),
        "task": (str,),
        "task_index": (int,),
        "prefix": (np.ndarray,),
        "seed": (int,),
    },
    "metadata": {"id": (int,)},
    "health": {"id": (int,)},
    "reset": {"id": (int,)},
}
REQUIRED = {"hello": ("version",), "infer": ("id", "observation")}


class ProtocolError(ValueError):
    """A message that breaks the protocol; its text is what the error reply says."""


def encode(message: dict[str, Any]) -> bytes:
    """A message (numpy arrays anywhere inside) -> the bytes of one binary frame."""
    return msgpack.packb(message, default=_encode_array, use_bin_type=True)


def encode_entries(fields: dict[str, Any]) -> bytes:
    """The packed key/value pairs of a map without its header: parts of one message, encoded apart."""
    packer = msgpack.Packer(default=_encode_array, use_bin_type=True)
    return b"".join(packer.pack(key) + packer.pack(value) for key, value in fields.items())


def join_entries(count: int, *parts: bytes) -> bytes:
    """One message from ``encode_entries`` parts holding ``count`` entries in all."""
    return msgpack.Packer().pack_map_header(count) + b"".join(parts)


def decode(data: Any, *, max_elements: int = 1 << 24) -> dict[str, Any]:
    """One received frame -> the message, its arrays as numpy arrays; ProtocolError naming what is wrong.

    Checks only the encoding (binary frame, msgpack, a map with a string ``type``, well-formed arrays of
    at most ``max_elements`` values); :func:`check_client_message` checks the fields.
    """
    if isinstance(data, str):
        raise ProtocolError("send binary frames of msgpack, not text frames")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a message is a binary frame, got {type(data).__name__}")

    def ext_hook(code: int, payload: bytes) -> Any:
        if code != ARRAY_EXT:
            raise ProtocolError(f"unknown msgpack extension type {code} (arrays are type {ARRAY_EXT})")
        return _decode_array(payload, max_elements)

    try:
        message = msgpack.unpackb(
            bytes(data), ext_hook=ext_hook, raw=False, strict_map_key=True, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises many kinds on garbage: all mean the same to a client
        raise ProtocolError(f"the frame is not a msgpack message ({type(error).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message is a msgpack map with a 'type', got {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("the message has no 'type' string (hello, infer, metadata, health or reset)")
    return message


def check_client_message(message: dict[str, Any]) -> dict[str, Any]:
    """The fields of a client message: known type, known fields of the right types, required ones present."""
    kind = message["type"]
    if _depth(message) > MAX_DEPTH:
        raise ProtocolError(f"the message nests maps or lists deeper than {MAX_DEPTH} levels")
    fields = CLIENT_MESSAGES.get(kind)
    if fields is None:
        raise ProtocolError(f"unknown message type {kind!r}; known: {', '.join(CLIENT_MESSAGES)}")
    for name, value in message.items():
        if name == "type":
            continue
        if name not in fields:
            raise ProtocolError(f"{kind} has no field {name!r}; its fields: {', '.join(fields)}")
        if isinstance(value, bool) or not isinstance(value, fields[name]):
            wanted = " or ".join(_type_name(t) for t in fields[name])
            raise ProtocolError(f"{kind} field {name!r} must be {wanted}, got {_type_name(type(value))}")
    missing = [name for name in REQUIRED.get(kind, ()) if name not in message]
    if missing:
        raise ProtocolError(f"{kind} needs the field(s) {', '.join(map(repr, missing))}")
    if "id" in message and not 0 <= message["id"] < 2**63:
        raise ProtocolError(f"{kind} field 'id' must be an integer in [0, 2**63), got {message['id']}")
    if kind == "infer":
        if ("task" in message) == ("task_index" in message):
            raise ProtocolError("infer needs exactly one of 'task' (an instruction) or 'task_index'")
        for key, value in message["observation"].items():
            if not isinstance(key, str) or not isinstance(value, np.ndarray):
                raise ProtocolError(
                    f"infer 'observation' maps feature names to arrays; {key!r} is {_type_name(type(value))}"
                )
        if "seed" in message and not 0 <= message["seed"] < 2**63:
            raise ProtocolError(f"infer field 'seed' must be an integer in [0, 2**63), got {message['seed']}")
    return message


def error(message: str, request_id: int | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "error", "message": message}
    if request_id is not None:
        reply["id"] = request_id
    return reply


def _encode_array(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot send a {type(value).__name__}; send numpy arrays, numbers, strings, maps")
    array = np.ascontiguousarray(value)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype.str not in DTYPES:
        raise TypeError(f"cannot send arrays of dtype {array.dtype}; use one of {', '.join(DTYPES)}")
    array = array.astype(dtype, copy=False)
    payload = msgpack.packb([dtype.str, list(array.shape), array.tobytes()], use_bin_type=True)
    return msgpack.ExtType(ARRAY_EXT, payload)


def _decode_array(payload: bytes, max_elements: int) -> np.ndarray:
    try:
        dtype, shape, raw = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception:
        raise ProtocolError("an array extension must hold [dtype, shape, bytes]") from None
    if dtype not in DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} is not accepted; use one of {', '.join(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError(f"array shape must be a list of at most 8 sizes >= 0, got {shape!r}")
    count = math.prod(shape)
    if count > max_elements:
        raise ProtocolError(f"an array of {count} values is larger than the server's limit of {max_elements}")
    if not isinstance(raw, bytes) or len(raw) != count * np.dtype(dtype).itemsize:
        raise ProtocolError(f"array data does not match dtype {dtype} and shape {tuple(shape)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # own, writable memory


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _type_name(kind: type) -> str:
    return {np.ndarray: "an array", dict: "a map", str: "a string", int: "an integer"}.get(
        kind, kind.__name__
    )
