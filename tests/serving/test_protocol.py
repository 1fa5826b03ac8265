"""The wire format: openpi's msgpack + numpy encoding, a strict decoder, observation checks."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smolvla.serving.protocol import Limits, ObservationSpec, ProtocolError, packb, unpackb
from tests.serving.conftest import micro_obs
from tests.serving.openpi_wire import openpi_style_packb

MESSAGE = {
    "a": np.arange(12, dtype=np.float32).reshape(3, 4),
    "img": np.zeros((4, 5, 3), np.uint8),
    "b": np.array([True, False]),
    "s": np.int64(7),
    "f": np.float32(1.5),
    "nested": {"x": [1, 2.5, "three", None, b"raw"]},
    "empty": np.zeros((0, 3), np.float64),
}


def test_round_trip_and_bytes_identical_to_openpi():
    data = packb(MESSAGE)
    assert data == openpi_style_packb(MESSAGE)
    out = unpackb(data)
    for k in ("a", "img", "b", "empty"):
        assert out[k].dtype == MESSAGE[k].dtype and out[k].shape == MESSAGE[k].shape
        np.testing.assert_array_equal(out[k], MESSAGE[k])
    assert out["s"] == 7 and out["s"].dtype == np.int64
    assert out["f"] == np.float32(1.5) and out["f"].dtype == np.float32
    assert out["nested"] == {"x": [1, 2.5, "three", None, b"raw"]}


def test_openpi_client_decodes_ours_and_we_decode_theirs():
    msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy")
    assert packb(MESSAGE) == msgpack_numpy.packb(MESSAGE)
    theirs = unpackb(msgpack_numpy.packb(MESSAGE))
    np.testing.assert_array_equal(theirs["a"], MESSAGE["a"])
    ours = msgpack_numpy.unpackb(packb(MESSAGE))
    np.testing.assert_array_equal(ours["img"], MESSAGE["img"])


def test_encoder_refuses_object_arrays_and_unknown_types():
    with pytest.raises(ProtocolError, match="dtype object"):
        packb({"x": np.array([object()])})
    with pytest.raises(ProtocolError, match="complex"):
        packb({"x": np.zeros(2, np.complex64)})
    with pytest.raises(ProtocolError, match="cannot encode set"):
        packb({"x": {1, 2}})


def array_map(over):
    d = {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": [2]}
    d.update(over)
    return msgpack.packb(d)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (array_map({b"dtype": "|O"}), "dtype '\\|O'"),
        (array_map({b"dtype": ">f4"}), "dtype '>f4'"),
        (array_map({b"dtype": "<c8"}), "dtype"),
        (array_map({b"shape": [3]}), "8 bytes of data, expected 12"),
        (array_map({b"shape": [-2]}), "non-negative"),
        (array_map({b"shape": [2**40, 2**40]}), "expected 4835703278458516698824704"),
        (array_map({b"shape": [1] * 9, b"data": b"\0" * 4}), "at most 8"),
        (array_map({b"data": "text"}), "data is str"),
        (array_map({b"__ndarray__": 1}), "expected True"),
        (array_map({b"extra": 1}), "got keys"),
        (msgpack.packb({b"__npgeneric__": True, b"data": 300, b"dtype": "|i1"}), "not a \\|i1"),
        (msgpack.packb({b"__npgeneric__": True, b"data": "x", b"dtype": "<f4"}), "expected a number"),
        (msgpack.packb(msgpack.ExtType(5, b"abc")), "max_ext_len|extension type"),
        (msgpack.packb(msgpack.Timestamp(1)), "extension type -1 is not allowed"),
        (msgpack.packb({(1, 2): 3}, strict_types=False), "not a valid msgpack"),
        (b"\x92\x01", "not a valid msgpack"),  # truncated array
        (msgpack.packb(1) + b"\x01", "not a valid msgpack"),  # trailing bytes
        (b"\xc1", "not a valid msgpack"),  # reserved byte
        (b"\xdd\xff\xff\xff\xff", "announces more than 4096 values"),  # a 4-billion-element array announced
        (b"\x91" * 5000 + b"\x01", "nested more than 16 levels"),
        ("a str", "expected bytes"),
    ],
)
def test_decoder_rejects_cleanly(data, match):
    with pytest.raises(ProtocolError, match=match):
        unpackb(data)


def test_decoder_limits():
    with pytest.raises(ProtocolError, match="expected at most 100"):
        unpackb(b"\x00" * 101, Limits(max_message_bytes=100))
    with pytest.raises(ProtocolError, match="not a valid msgpack"):
        unpackb(msgpack.packb("x" * 100), Limits(max_str_len=10))
    with pytest.raises(ProtocolError, match="not a valid msgpack"):
        unpackb(msgpack.packb({str(i): i for i in range(20)}), Limits(max_map_len=10))


# -- fuzzing: any bytes in, a value or a ProtocolError out -------------------------------------------

VALID = packb({**micro_obs(), "timestep": 3, "seed": 1})


def _decode_cleanly(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        unpackb(data, Limits(max_message_bytes=1 << 20))


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data):
    _decode_cleanly(data)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(VALID) - 1), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"])
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, len(VALID)),
)
def test_fuzz_mutated_valid_messages(edits, cut):
    data = bytearray(VALID)
    for pos, byte, op in edits:
        pos = min(pos, len(data) - 1)
        if op == "set":
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif len(data) > 1:
            del data[pos]
    _decode_cleanly(bytes(data))
    _decode_cleanly(bytes(data[:cut]))


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
structures = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(structures)
def test_fuzz_structures_round_trip_or_fail_cleanly(obj):
    assert unpackb(packb(obj)) == obj


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=30), structures, max_size=6))
def test_fuzz_observation_validation_raises_only_protocol_errors(msg):
    spec = ObservationSpec(cameras=("observation.images.camera1",), state_dim=3)
    with contextlib.suppress(ProtocolError):
        spec.validate(unpackb(packb(msg)))


# -- observation checks --------------------------------------------------------------------------

SPEC = ObservationSpec(
    cameras=("observation.images.camera1", "observation.images.camera2"), state_dim=3, max_task_chars=20
)


def test_valid_observation_and_request_fields():
    obs, fields = SPEC.validate(
        {**micro_obs(), "timestep": np.int64(5), "inference_delay": 2, "request_id": -1}
    )
    assert fields == {"timestep": 5, "inference_delay": 2, "request_id": -1}
    assert obs["observation.state"].dtype == np.float32 and obs["task"] == "pick up the cube"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"observation.state": np.zeros(4, np.float32)},
            "observation.state: shape \\[4\\], expected \\[3\\]",
        ),
        ({"observation.state": np.array([1.0, np.nan, 0.0])}, "expected finite"),
        ({"observation.state": np.zeros(3, np.int32)}, "observation.state: got int32"),
        ({"observation.state": [0.0, 0.0, 0.0]}, "observation.state: got list"),
        ({"observation.images.camera1": np.zeros((3, 16, 16), np.uint8)}, "camera1: uint8 image of shape"),
        ({"observation.images.camera2": np.zeros((12, 16, 3), np.float32)}, "camera2: float image of shape"),
        ({"observation.images.camera2": np.full((3, 12, 16), 2.0, np.float32)}, "expected \\[0, 1\\]"),
        ({"observation.images.camera2": np.full((3, 12, 16), np.inf, np.float32)}, "NaN or infinite"),
        ({"observation.images.camera1": np.zeros((16, 16, 3), np.int16)}, "camera1: dtype int16"),
        ({"observation.images.camera1": np.zeros((0, 16, 3), np.uint8)}, "0x16 pixels"),
        ({"task": "x" * 21}, "task: 21 characters, expected at most 20"),
        ({"task": 5}, "task: got int"),
        (
            {"observation.images.cam9": np.zeros((2, 2, 3), np.uint8)},
            "unknown field\\(s\\) \\['observation.images.cam9'\\]",
        ),
        ({"timestep": -1}, "timestep: got -1"),
        ({"timestep": True}, "timestep: got True"),
        ({"inference_delay": 5000}, "inference_delay: got 5000, expected an integer in \\[0, 1024\\]"),
    ],
)
def test_bad_fields_are_named(change, match):
    with pytest.raises(ProtocolError, match=match):
        SPEC.validate({**micro_obs(), **change})


def test_missing_fields_are_named():
    obs = micro_obs()
    del obs["observation.images.camera2"]
    with pytest.raises(ProtocolError, match=r"missing camera\(s\) \['observation\.images\.camera2'\]"):
        SPEC.validate(obs)
    obs = micro_obs()
    del obs["observation.state"]
    with pytest.raises(ProtocolError, match=r"observation\.state: missing"):
        SPEC.validate(obs)
    with pytest.raises(ProtocolError, match="expected a map"):
        SPEC.validate([1, 2])
    with pytest.raises(ProtocolError, match="are not strings"):
        SPEC.validate({b"task": "x"})
