"""The processors' checkpoint: what the agent commits to the spool with the sealed batches.

Three state blobs (msgpack behind a CRC32, and JSON)::

    processors.layout   rules (config JSON, fingerprint) + channel metadata per chain row
                        (rewritten only when a channel appears or the config changes)
    processors.arrays   every stage's per-row numpy arrays, as raw bytes (dtype, shape, data)
    batcher.pending     readings the batcher holds but has not sealed yet (JSON per reading)

    sealed blob = crc32 of payload (4 bytes, big endian) | payload

This module is the format: the blob records, sealing and opening, array packing. What goes
in them is :class:`edge_agent._pipeline.ChannelPipeline`'s and :class:`edge_agent._batcher.
Batcher`'s business.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from edge_agent._errors import EdgeError

__all__ = [
    "KEY_ARRAYS",
    "KEY_LAYOUT",
    "KEY_PENDING",
    "STATE_KEYS",
    "STATE_VERSION",
    "ArrayBlob",
    "ArraysBlob",
    "ChannelBlob",
    "CheckpointError",
    "LayoutBlob",
    "arrays_decoder",
    "layout_decoder",
    "open_blob",
    "pack_array",
    "packed_sealed",
    "rules_fingerprint",
    "seal_blob",
    "unpack_array",
]

#: Bump when the checkpoint layout changes: older blobs are then ignored (counted, logged).
STATE_VERSION: Final = 1
KEY_LAYOUT: Final = "processors.layout"
KEY_ARRAYS: Final = "processors.arrays"
KEY_PENDING: Final = "batcher.pending"
#: The spool state keys of a checkpoint.
STATE_KEYS: Final = (KEY_LAYOUT, KEY_ARRAYS, KEY_PENDING)


class CheckpointError(EdgeError):
    """A saved checkpoint that cannot be used (corrupt, other version, does not fit)."""


class ArrayBlob(msgspec.Struct, array_like=True, frozen=True):
    dtype: str
    shape: list[int]
    data: bytes


class ChannelBlob(msgspec.Struct, array_like=True, frozen=True):
    device: str
    measurement: str
    tags: list[tuple[str, str]]
    field: str
    clock: str


class LayoutBlob(msgspec.Struct, frozen=True):
    version: int
    fingerprint: str
    rules: list[str]
    channels: list[list[ChannelBlob]]


class ArraysBlob(msgspec.Struct, frozen=True):
    version: int
    fingerprint: str
    chains: list[list[dict[str, ArrayBlob]]]


layout_decoder: Final = msgspec.msgpack.Decoder(LayoutBlob)
arrays_decoder: Final = msgspec.msgpack.Decoder(ArraysBlob)
_pack: Final = msgspec.msgpack.Encoder()


def seal_blob(payload: bytes) -> bytes:
    """``crc32 (4 bytes, big endian) + payload``: SQLite keeps no page checksums."""
    return zlib.crc32(payload).to_bytes(4, "big") + payload


def packed_sealed(obj: object) -> bytearray:
    """:func:`seal_blob` of the msgpack of ``obj``, encoded in place (one buffer, no copy)."""
    buf = bytearray(4)
    _pack.encode_into(obj, buf, 4)
    buf[:4] = zlib.crc32(memoryview(buf)[4:]).to_bytes(4, "big")
    return buf


def open_blob(blob: bytes | bytearray) -> bytes | bytearray:
    """The payload of a :func:`seal_blob`; :class:`CheckpointError` if it was damaged."""
    if len(blob) < 4 or zlib.crc32(blob[4:]).to_bytes(4, "big") != blob[:4]:
        raise CheckpointError("checkpoint blob fails its checksum")
    return blob[4:]


def pack_array(a: NDArray[np.generic]) -> ArrayBlob:
    # The array's own buffer (rows [:n] of a C-ordered array are contiguous): msgspec writes
    # it straight into the blob, no intermediate copy.
    data = a.data if a.flags.c_contiguous else a.tobytes()
    return ArrayBlob(a.dtype.str, list(a.shape), data)  # type: ignore[arg-type]


#: dtypes stage state may have (numpy parses other dtype strings with ``ast``: never trust them)
_DTYPES: Final = frozenset(
    np.dtype(t).str for t in (np.float64, np.int64, np.int32, np.intp, np.bool_)
)


def unpack_array(a: ArrayBlob) -> NDArray[np.generic]:
    if a.dtype not in _DTYPES:
        raise CheckpointError(f"unexpected dtype {a.dtype!r}")
    try:
        out: NDArray[np.generic] = np.frombuffer(a.data, dtype=np.dtype(a.dtype)).reshape(a.shape)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"bad array {a.dtype}{a.shape}: {exc}") from exc
    return out


def rules_fingerprint(rules_json: list[str]) -> str:
    """Short hash of the processor rules (their canonical JSON, in order)."""
    return hashlib.sha256("\n".join(rules_json).encode()).hexdigest()[:16]

