"""Batching: readings → numbered batches, committed to the spool with the checkpoint.

::

    readings ─▶ Batcher.add ─▶ size/age reached ─▶ seal: encode_batch (seq) ─▶ sealed, in memory
    Batcher.commit(state) ─▶ Spool.commit: sealed batches + state blobs + pending readings,
                             one transaction

So a sample is, as of the last commit, either in a spooled batch or in the checkpoint: never
both, never neither.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

import msgspec

from edge_agent._checkpoint import KEY_PENDING, CheckpointError
from edge_agent._config import BatchConfig
from edge_agent._spool import Spool
from telemetry import Batch, PayloadTooLarge, Reading, encode_batch

__all__ = ["Batcher"]

_enc: Final = msgspec.json.Encoder()
_pending_dec: Final = msgspec.json.Decoder(list[Reading])


class Batcher:
    """Collects readings and seals them into numbered batches; :meth:`commit` writes them.

    A batch is sealed when it reaches ``max_readings`` or ``max_bytes`` (estimated from the
    readings' encoded sizes) or when its first reading waited ``max_age_s``. Sealed batches
    wait in memory for :meth:`commit`, which writes them to the spool in one transaction
    together with the state blobs it is given (and the readings still pending, so that they
    survive a crash too).
    """

    _ENVELOPE: Final = 96  # bytes of {"v":..,"gw":..,"seq":..,"r":[]} around the readings

    def __init__(self, gateway: str, cfg: BatchConfig, spool: Spool) -> None:
        self.gateway = gateway
        self.cfg = cfg
        self.spool = spool
        self._pending: list[Reading] = []
        self._encoded: list[bytes] = []  # JSON of each pending reading (size estimate, state)
        self._bytes = self._ENVELOPE
        self._since: float | None = None
        self._sealed: list[tuple[int, bytes, int]] = []
        self._pending_changed = False
        self.sealed_batches = 0
        self.sealed_readings = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def uncommitted(self) -> bool:
        """Sealed batches or changed pending readings not yet committed."""
        return bool(self._sealed) or self._pending_changed

    @property
    def sealed_waiting(self) -> bool:
        """Sealed batches not yet committed (they are committed on the tick they seal)."""
        return bool(self._sealed)

    def add(self, readings: list[Reading]) -> int:
        """Queue readings; seal full batches. Returns the number of batches sealed."""
        sealed = 0
        limit_n, limit_b = self.cfg.max_readings, self.cfg.max_bytes
        for r in readings:
            enc = _enc.encode(r)
            size = len(enc) + 1
            if self._pending and (
                len(self._pending) >= limit_n or self._bytes + size > limit_b
            ):
                sealed += self.seal()
            if self._since is None:
                self._since = time.monotonic()
            self._pending.append(r)
            self._encoded.append(enc)
            self._bytes += size
        if readings:
            self._pending_changed = True
        if len(self._pending) >= limit_n:
            sealed += self.seal()
        return sealed

    def due(self, now_mono: float) -> bool:
        return self._since is not None and now_mono - self._since >= self.cfg.max_age_s

    def seal(self) -> int:
        """Seal everything pending into batches (written by the next :meth:`commit`)."""
        pending, self._pending = self._pending, []
        self._encoded = []
        self._bytes = self._ENVELOPE
        self._since = None
        if not pending:
            return 0
        self._pending_changed = True
        return self._seal(pending)

    def _seal(self, readings: list[Reading]) -> int:
        seq = self.spool.next_seq + len(self._sealed)
        try:
            payload = encode_batch(Batch(gateway=self.gateway, seq=seq, readings=readings))
        except PayloadTooLarge:
            # The size estimate was off (it is per reading); split rather than fail.
            half = len(readings) // 2
            if half == 0:
                raise
            return self._seal(readings[:half]) + self._seal(readings[half:])
        self._sealed.append((seq, payload, len(readings)))
        return 1

    def pending_blob(self) -> bytes:
        """The pending readings as a JSON array (see :meth:`restore`)."""
        return b"[" + b",".join(self._encoded) + b"]"

    def restore(self, blob: bytes) -> int:
        """Queue the readings of a :meth:`pending_blob`; returns how many."""
        try:
            readings = _pending_dec.decode(blob)
        except (msgspec.DecodeError, ValueError) as exc:
            raise CheckpointError(f"corrupt pending readings: {exc!r}") from exc
        self.add(readings)
        return len(readings)

    def commit(self, state: Mapping[str, bytes | bytearray] | None = None) -> int:
        """Write sealed batches, ``state`` and the pending readings in one transaction;
        returns the number of batches written."""
        blobs: dict[str, bytes | bytearray | None] = dict(state or {})
        blobs[KEY_PENDING] = self.pending_blob()
        sealed, self._sealed = self._sealed, []
        try:
            self.spool.commit(sealed, blobs)
        except BaseException:
            self._sealed = sealed + self._sealed
            raise
        self._pending_changed = False
        self.sealed_batches += len(sealed)
        self.sealed_readings += sum(n for _, _, n in sealed)
        return len(sealed)
