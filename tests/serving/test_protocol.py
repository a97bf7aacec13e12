import msgpack
import numpy as np
import pytest

from mode_policy.serving.protocol import ProtocolError, check_client_message, decode, encode


def test_arrays_and_fields_round_trip():
    message = {
        "type": "infer", "id": 7, "task": "open the drawer", "seed": 3,
        "observation": {"observation.state": np.arange(6, dtype=np.float32).reshape(2, 3),
                        "observation.images.corner": np.zeros((1, 3, 4, 4), np.uint8)},
        "prefix": np.ones((2, 4), np.float64),
    }  # fmt: skip
    back = check_client_message(decode(encode(message)))
    assert back["id"] == 7 and back["task"] == "open the drawer"
    for key, value in message["observation"].items():
        assert back["observation"][key].dtype == value.dtype
        np.testing.assert_array_equal(back["observation"][key], value)
    assert back["prefix"].dtype == np.float64 and back["prefix"].flags.writeable


def test_big_endian_arrays_travel_as_little_endian():
    value = np.arange(3, dtype=">f4")
    np.testing.assert_array_equal(decode(encode({"type": "x", "a": value}))["a"], value)


def _array_message(header: list) -> bytes:
    return msgpack.packb({"type": "x", "a": msgpack.ExtType(1, msgpack.packb(header))})


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("text", "binary"),
        (b"\xc1\xc1\xc1", "not a msgpack"),
        (msgpack.packb([1, 2]), "map"),
        (msgpack.packb({"id": 1}), "'type'"),
        (msgpack.packb({"type": "x", "a": msgpack.ExtType(9, b"")}), "extension type 9"),
        (_array_message(["<c16", [1], b"0" * 16]), "dtype"),
        (_array_message(["<f4", [3], b"0" * 4]), "does not match"),
        (_array_message(["<f4", [-1], b""]), "shape"),
        (msgpack.packb({"type": "x", "a": msgpack.ExtType(1, b"\x01")}), "[dtype, shape, bytes]"),
    ],
)  # fmt: skip
def test_garbage_is_one_protocol_error(data, words):
    with pytest.raises(ProtocolError, match=None) as error:
        decode(data)
    assert words in str(error.value)


def test_huge_arrays_are_refused_before_they_are_built():
    payload = msgpack.packb(["<f4", [1 << 20, 1 << 20], b""])
    with pytest.raises(ProtocolError, match="larger than the server's limit"):
        decode(msgpack.packb({"type": "x", "a": msgpack.ExtType(1, payload)}))


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"type": "launch"}, "unknown message type"),
        ({"type": "hello"}, "needs the field"),
        ({"type": "hello", "version": 1, "extra": 1}, "no field 'extra'"),
        ({"type": "hello", "version": "1"}, "must be an integer"),
        ({"type": "infer", "id": 1, "observation": {}}, "exactly one of 'task'"),
        ({"type": "infer", "id": 1, "observation": {}, "task": "a", "task_index": 0}, "exactly one"),
        ({"type": "infer", "id": 1, "observation": {"s": [1, 2]}, "task": "a"}, "maps feature names"),
        ({"type": "infer", "id": -1, "observation": {}, "task": "a"}, "'id' must be"),
        ({"type": "infer", "id": True, "observation": {}, "task": "a"}, "must be an integer"),
        ({"type": "infer", "id": 1, "observation": {}, "task": "a", "seed": -5}, "'seed'"),
        ({"type": "health", "id": 1, "nested": {"a": {"b": {"c": {"d": 1}}}}}, "deeper"),
    ],
)  # fmt: skip
def test_bad_fields_are_named(message, words):
    with pytest.raises(ProtocolError) as error:
        check_client_message(decode(encode(message)))
    assert words in str(error.value)


def test_sending_an_object_that_is_not_data_fails_on_the_sender():
    with pytest.raises(TypeError, match="cannot send"):
        encode({"type": "x", "a": object()})
