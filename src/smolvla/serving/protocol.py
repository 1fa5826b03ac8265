"""The wire format of the policy server: msgpack over WebSocket, numpy arrays as typed binary.

It is openpi's policy-server protocol, so `openpi_client.WebsocketClientPolicy` talks to our server
unchanged:

- on connect the server sends one binary frame: the metadata (a msgpack map);
- the client sends an observation (a msgpack map), the server answers with a binary frame holding a
  map with `"actions"` [chunk, action_dim], or with a text frame holding an error message;
- a numpy array travels as the map `{b"__ndarray__": True, b"data": <bytes, C order>,
  b"dtype": <numpy dtype str, e.g. "<f4">, b"shape": [dims]}` and a numpy scalar as
  `{b"__npgeneric__": True, b"data": <value>, b"dtype": <str>}` (the keys are msgpack bin, as openpi's
  Python packer writes them).

Nothing here can run code: the decoder builds only maps, lists, strings, bytes, numbers, booleans,
None and numpy arrays of plain numeric dtypes, and checks every size against `Limits` before it
allocates. Its work is bounded too, not only its input's bytes: before msgpack builds anything, a
walk over the headers counts the values the message announces (in all its maps and lists together)
and its nesting, and refuses a message past `Limits.max_values` or `Limits.max_depth` as soon as the
announcement is read, so 15 MB of nested small integers costs microseconds, not seconds. Every
failure is a `ProtocolError` with a message naming what was wrong. This module needs numpy and msgpack
only (no torch), so robot-side code can use it.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from smolvla.config import ConfigError
from smolvla.errors import SmolVLAError

NDARRAY = b"__ndarray__"
NPGENERIC = b"__npgeneric__"
_ARRAY_KEYS = frozenset({NDARRAY, b"data", b"dtype", b"shape"})
_GENERIC_KEYS = frozenset({NPGENERIC, b"data", b"dtype"})

# Plain numeric dtypes only: object arrays could smuggle Python objects, and structured or complex
# dtypes have no use here. Big-endian ones are refused rather than byte-swapped silently.
DTYPES: frozenset[str] = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)
MAX_NDIM = 8


class ProtocolError(SmolVLAError, ValueError):
    """A message that is not valid for this protocol: the text says which part and why."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one decoded message. The WebSocket layer enforces `max_message_bytes` before a frame
    is even read in full; the rest bound what one message may expand into."""

    max_message_bytes: int = 16 * 2**20
    max_str_len: int = 64 * 1024
    max_array_len: int = 4096  # elements of one msgpack array (e.g. a shape, a list)
    max_map_len: int = 256
    max_ndim: int = MAX_NDIM
    # Totals over the whole message, which the per-container lengths above do not bound (a list of
    # 4096 lists of 4096 integers passes them). An observation of a few cameras is about 20 values per
    # array (its map, keys, shape) plus a handful of fields; the metadata a server sends is a few
    # hundred. 4096 leaves room for a long state vector sent as a list, and keeps the walk in
    # milliseconds.
    max_values: int = 4096
    max_depth: int = 16  # an observation is 3 deep (message, array map, shape list)


DEFAULT_LIMITS = Limits()


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.str not in DTYPES:
            raise ProtocolError(
                f"array of dtype {obj.dtype} cannot be sent, expected one of {sorted(DTYPES)}"
            )
        return {NDARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.str not in DTYPES:
            raise ProtocolError(
                f"scalar of dtype {obj.dtype} cannot be sent, expected one of {sorted(DTYPES)}"
            )
        return {NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise ProtocolError(
        f"cannot encode {type(obj).__name__}: expected dict, list, str, bytes, numbers, numpy"
    )


def packb(obj: Any) -> bytes:
    """Encodes a message (dicts, lists, strings, numbers, numpy arrays and scalars)."""
    try:
        return msgpack.packb(obj, default=_pack_default, use_bin_type=True)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot encode message: {e}") from e


def _decode_array(d: dict[Any, Any], max_ndim: int) -> np.ndarray:
    if set(d) != _ARRAY_KEYS:
        raise ProtocolError(
            f"ndarray: got keys {sorted(map(repr, d))}, expected {sorted(map(repr, _ARRAY_KEYS))}"
        )
    if d[NDARRAY] is not True:
        raise ProtocolError(f"ndarray: __ndarray__ is {d[NDARRAY]!r}, expected True")
    dtype, shape, data = d[b"dtype"], d[b"shape"], d[b"data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"ndarray: dtype {dtype!r:.40}, expected one of {sorted(DTYPES)}")
    if not isinstance(shape, (list, tuple)) or len(shape) > max_ndim:
        raise ProtocolError(f"ndarray: shape {shape!r:.80}, expected a list of at most {max_ndim} sizes")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError(f"ndarray: shape {shape!r:.80}, expected non-negative integers")
    if not isinstance(data, bytes):
        raise ProtocolError(f"ndarray: data is {type(data).__name__}, expected bytes")
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize  # Python ints: no overflow on absurd shapes
    if expected != len(data):
        raise ProtocolError(
            f"ndarray: {len(data)} bytes of data, expected {expected} for shape {list(shape)} dtype {dtype}"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _decode_generic(d: dict[Any, Any]) -> np.generic:
    if set(d) != _GENERIC_KEYS or d[NPGENERIC] is not True:
        raise ProtocolError(
            f"npgeneric: got keys {sorted(map(repr, d))}, expected {sorted(map(repr, _GENERIC_KEYS))}"
        )
    dtype, value = d[b"dtype"], d[b"data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"npgeneric: dtype {dtype!r:.40}, expected one of {sorted(DTYPES)}")
    if not isinstance(value, (bool, int, float)):
        raise ProtocolError(f"npgeneric: data is {type(value).__name__}, expected a number")
    try:
        with np.errstate(all="ignore"):  # a float64 too large for float32 becomes inf, as numpy does
            return np.dtype(dtype).type(value)
    except (OverflowError, TypeError, ValueError) as e:
        raise ProtocolError(f"npgeneric: value {value!r:.40} is not a {dtype}: {e}") from None


def _check_tree(obj: Any, depth: int = 0) -> None:
    """Only the plain types (plus decoded arrays) may come out: msgpack's Timestamp or ExtType may not."""
    if depth > 64:
        raise ProtocolError("message nested more than 64 levels deep")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(k, depth + 1)
            _check_tree(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_tree(v, depth + 1)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, np.generic)):
        raise ProtocolError(f"unsupported value of type {type(obj).__name__} in message")


# msgpack's header bytes: those of fixed size (value: bytes after the type byte), and those followed by a
# length of 1, 2 or 4 bytes (value: (length bytes, extra bytes before the payload: ext's type code)).
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_FIXED.update({0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8})
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin 8/16/32, str 8/16/32
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # (length bytes, values per entry)
_EXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16, 0xC7: -1, 0xC8: -2, 0xC9: -4}  # -n: n-byte length
_LEN = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


def _walk(data: bytes, limits: Limits) -> None:
    """Reads only the headers of a msgpack message, skipping string and binary payloads, and refuses it
    once the values announced so far pass `max_values` or the nesting passes `max_depth`. Its work is at
    most proportional to `max_values` whatever the message, and what passes it is cheap to build."""
    end = len(data)
    pos = 0
    announced = 1  # values the message has announced so far: the top one, then every container's items
    open_items = [1]  # per open container (and the top level): values still to read
    while open_items:
        if open_items[-1] == 0:
            open_items.pop()
            continue
        open_items[-1] -= 1
        if pos >= end:
            raise ProtocolError(f"not a valid msgpack message: truncated at byte {pos}")
        b = data[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0:  # positive / negative fixint
            continue
        n = 0
        if 0x80 <= b <= 0x9F:  # fixmap, fixarray
            n = (b & 0x0F) * (2 if b <= 0x8F else 1)
        elif 0xA0 <= b <= 0xBF:  # fixstr
            pos += b & 0x1F
            continue
        elif b in _FIXED:
            pos += _FIXED[b]
            continue
        elif b in _SIZED:
            size = _SIZED[b]
            if pos + size > end:
                raise ProtocolError(f"not a valid msgpack message: truncated at byte {pos}")
            pos += size + _LEN[size].unpack_from(data, pos)[0]
            continue
        elif b in _CONTAINERS:
            size, per_entry = _CONTAINERS[b]
            if pos + size > end:
                raise ProtocolError(f"not a valid msgpack message: truncated at byte {pos}")
            n = _LEN[size].unpack_from(data, pos)[0] * per_entry
            pos += size
        elif b in _EXT:
            size = _EXT[b]
            if size < 0 and pos - size < end:
                pos -= size
            code = struct.unpack_from(">b", data, pos)[0] if pos < end else "?"
            raise ProtocolError(f"msgpack extension type {code} is not allowed")
        else:
            raise ProtocolError(f"not a valid msgpack message: reserved byte 0x{b:02x} at byte {pos - 1}")
        announced += n
        if announced > limits.max_values:
            raise ProtocolError(
                f"message: announces more than {limits.max_values} values (in all its maps and lists "
                f"together), expected at most {limits.max_values}"
            )
        if n:
            open_items.append(n)
            if len(open_items) > limits.max_depth + 1:
                raise ProtocolError(f"message: nested more than {limits.max_depth} levels deep")
    if pos != end:
        what = "truncated" if pos > end else f"{end - pos} bytes of extra data after the message"
        raise ProtocolError(f"not a valid msgpack message: {what}")


def unpackb(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decodes one message, strictly. Raises ProtocolError (never anything else) on bad input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message: got {type(data).__name__}, expected bytes (a binary frame)")
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(f"message: {len(data)} bytes, expected at most {limits.max_message_bytes}")
    data = bytes(data)
    _walk(data, limits)

    def hook(d: dict[Any, Any]) -> Any:
        if NDARRAY in d:
            return _decode_array(d, limits.max_ndim)
        if NPGENERIC in d:
            return _decode_generic(d)
        return d

    def no_ext(code: int, payload: bytes) -> Any:
        raise ProtocolError(f"msgpack extension type {code} is not allowed")

    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            object_hook=hook,
            ext_hook=no_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_message_bytes,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("message nested too deeply") from None
    except Exception as e:  # msgpack raises ValueError, TypeError, FormatError, StackError, ExtraData...
        raise ProtocolError(f"not a valid msgpack message: {type(e).__name__}: {e}"[:300]) from None
    _check_tree(obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Observations: what the server accepts, checked field by field


def api_key_from_env(var: str | None) -> str | None:
    """The API key in environment variable `var` (openpi-client's `Authorization: Api-Key ...`), or None
    when no variable is named; a named but unset or empty one is an error, not an open server."""
    if not var:
        return None
    key = os.environ.get(var)
    if not key:
        raise ConfigError(f"--api_key_env: environment variable {var!r} is not set or empty")
    return key


TASK_KEY = "task"
STATE_KEY = "observation.state"
IMAGES_PREFIX = "observation.images."
# Optional request fields besides the observation. timestep: the control step of the first action the
# answer is for (echoed back, and how RTC finds the unexecuted rest of the previous chunk);
# inference_delay: RTC's d, in control steps; seed: the flow-matching noise (reproducible answers);
# request_id: echoed back, so a client can match answers to requests.
REQUEST_FIELDS = ("timestep", "inference_delay", "seed", "request_id")
CONTROL_KEY = "__ctrl__"  # openpi's episode_start / episode_end messages
_FLOAT_IMAGE_DTYPES = ("<f2", "<f4", "<f8")
_STATE_DTYPES = ("<f2", "<f4", "<f8")


def _int_field(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, np.integer):
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError(f"{name}: got {v!r:.40}, expected an integer in [{lo}, {hi}]")
    return v


@dataclass(frozen=True)
class ObservationSpec:
    """The observation a policy expects: its cameras (`empty_cameras` of them may be left out), the
    state width, and limits. The server sends it in its metadata, so clients can check before sending."""

    cameras: tuple[str, ...]
    state_dim: int | None
    empty_cameras: int = 0
    max_task_chars: int = 1024
    max_image_side: int = 4096
    max_inference_delay: int = 1024

    def to_metadata(self) -> dict[str, Any]:
        return {
            "cameras": list(self.cameras),
            "state_dim": self.state_dim,
            "empty_cameras": self.empty_cameras,
            "max_task_chars": self.max_task_chars,
            "max_image_side": self.max_image_side,
            "max_inference_delay": self.max_inference_delay,
        }

    def _image(self, key: str, v: Any) -> np.ndarray:
        if not isinstance(v, np.ndarray):
            raise ProtocolError(
                f"{key}: got {type(v).__name__}, expected a numpy array (uint8 HxWx3 or float 3xHxW)"
            )
        s = v.shape
        if v.dtype.str == "|u1":
            if v.ndim != 3 or s[2] != 3:
                raise ProtocolError(
                    f"{key}: uint8 image of shape {list(s)}, expected [H, W, 3] (channels last)"
                )
            h, w = s[0], s[1]
        elif v.dtype.str in _FLOAT_IMAGE_DTYPES:
            if v.ndim != 3 or s[0] != 3:
                raise ProtocolError(
                    f"{key}: float image of shape {list(s)}, expected [3, H, W] (channels first)"
                )
            h, w = s[1], s[2]
            if not np.all(np.isfinite(v)):
                raise ProtocolError(
                    f"{key}: float image has NaN or infinite values, expected finite in [0, 1]"
                )
            lo, hi = float(v.min(initial=0.0)), float(v.max(initial=0.0))
            if lo < 0.0 or hi > 1.0:
                raise ProtocolError(f"{key}: float image values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")
        else:
            raise ProtocolError(
                f"{key}: dtype {v.dtype}, expected uint8 [H, W, 3] or float [3, H, W] in [0, 1]"
            )
        if not (1 <= h <= self.max_image_side and 1 <= w <= self.max_image_side):
            raise ProtocolError(
                f"{key}: image of {h}x{w} pixels, expected sides in [1, {self.max_image_side}]"
            )
        return v

    def validate(self, msg: Any) -> tuple[dict[str, Any], dict[str, int]]:
        """(observation, request fields) of a decoded request, or ProtocolError naming the bad field."""
        if not isinstance(msg, dict):
            raise ProtocolError(f"request: got {type(msg).__name__}, expected a map of observation fields")
        keys = [k for k in msg if not isinstance(k, str)]
        if keys:
            raise ProtocolError(f"request: keys {keys!r:.80} are not strings")
        known = {*self.cameras, TASK_KEY, *REQUEST_FIELDS} | (
            {STATE_KEY} if self.state_dim is not None else set()
        )
        unknown = sorted(k for k in msg if k not in known)
        if unknown:
            raise ProtocolError(f"request: unknown field(s) {unknown}, expected {sorted(known)}")
        missing = [k for k in self.cameras if k not in msg]
        if not any(k in msg for k in self.cameras) or len(missing) > self.empty_cameras:
            raise ProtocolError(
                f"request: missing camera(s) {missing}; the policy takes {list(self.cameras)} "
                f"(at most {self.empty_cameras} may be left out)"
            )
        obs: dict[str, Any] = {k: self._image(k, msg[k]) for k in self.cameras if k in msg}
        if self.state_dim is not None:
            st = msg.get(STATE_KEY)
            if st is None:
                raise ProtocolError(
                    f"{STATE_KEY}: missing, expected a float array of shape [{self.state_dim}]"
                )
            if not isinstance(st, np.ndarray) or st.dtype.str not in _STATE_DTYPES:
                what = st.dtype if isinstance(st, np.ndarray) else type(st).__name__
                raise ProtocolError(
                    f"{STATE_KEY}: got {what}, expected a float array of shape [{self.state_dim}]"
                )
            if st.shape != (self.state_dim,):
                raise ProtocolError(f"{STATE_KEY}: shape {list(st.shape)}, expected [{self.state_dim}]")
            if not np.all(np.isfinite(st)):
                raise ProtocolError(f"{STATE_KEY}: values {st.tolist()}, expected finite numbers")
            obs[STATE_KEY] = st.astype(np.float32)
        task = msg.get(TASK_KEY)
        if not isinstance(task, str):
            raise ProtocolError(
                f"{TASK_KEY}: got {type(task).__name__}, expected the instruction as a string"
            )
        if len(task) > self.max_task_chars:
            raise ProtocolError(f"{TASK_KEY}: {len(task)} characters, expected at most {self.max_task_chars}")
        obs[TASK_KEY] = task
        fields: dict[str, int] = {}
        bounds = {
            "timestep": (0, 2**62),
            "inference_delay": (0, self.max_inference_delay),
            "seed": (0, 2**63 - 1),
            "request_id": (-(2**63), 2**63 - 1),
        }
        for name in REQUEST_FIELDS:
            if msg.get(name) is not None:
                fields[name] = _int_field(name, msg[name], *bounds[name])
        return obs, fields
