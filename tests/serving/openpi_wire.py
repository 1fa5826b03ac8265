"""openpi's wire encoding, written independently from its documented format (for compatibility tests)."""

from __future__ import annotations

import msgpack
import numpy as np


def openpi_style_packb(obj):
    """openpi_client.msgpack_numpy's encoding, written from its documented format: arrays as maps with
    bin keys __ndarray__/data/dtype/shape, scalars as __npgeneric__/data/dtype."""

    def default(o):
        if isinstance(o, np.ndarray):
            return {b"__ndarray__": True, b"data": o.tobytes(), b"dtype": o.dtype.str, b"shape": o.shape}
        if isinstance(o, np.generic):
            return {b"__npgeneric__": True, b"data": o.item(), b"dtype": o.dtype.str}
        return o

    return msgpack.packb(obj, default=default)
