"""The ack ledger: which received messages may be acknowledged, and in which order.

::

    receive order ─▶ ┌────────┬────────┬────────┬────────┐
                     │ mid 41 │ mid 42 │ mid 43 │ mid 44 │   parts outstanding per entry:
                     │ done   │ 1 part │ done   │ done   │   chunks in writes, dead-letter
                     └────────┴────────┴────────┴────────┘   records awaiting the broker
                       ▲ released      ▲ waits: 43 and 44 are done but stay behind 42

An entry is *done* when every part it holds was confirmed: its line protocol by InfluxDB
(204), its dead-letter record by the broker (PUBACK). :meth:`AckLedger.release` pops the done
entries from the front only, so acks leave in receive order (MQTT 4.6) even when writes finish
out of order. Entries received on an earlier connection (a stale epoch) are popped but their
acks are dropped: the broker redelivers those messages, and their packet ids may already name
other messages on the new connection.

No I/O and no locks: the session sends what :meth:`AckLedger.release` returns, holding the
epoch still meanwhile (``_session.py``).
"""

from __future__ import annotations

import collections

__all__ = ["AckLedger", "Entry"]


class Entry:
    """A received message in the ledger."""

    __slots__ = ("done", "epoch", "mid", "parts", "qos")

    def __init__(self, epoch: int, mid: int, qos: int) -> None:
        self.epoch = epoch
        self.mid = mid
        self.qos = qos
        self.parts = 0
        self.done = False


class AckLedger:
    """Received messages in receive order, each with its parts still outstanding."""

    __slots__ = ("_entries", "_publishing")

    def __init__(self) -> None:
        self._entries: collections.deque[Entry] = collections.deque()
        # Dead-letter records in flight: their publish packet id -> the message they hold.
        self._publishing: dict[int, Entry] = {}

    def __len__(self) -> int:
        """Messages received and not yet released (acked or dropped)."""
        return len(self._entries)

    def receive(self, epoch: int, mid: int, qos: int) -> Entry:
        """Record a message as received on connection ``epoch``; it holds no part yet."""
        entry = Entry(epoch, mid, qos)
        self._entries.append(entry)
        return entry

    @staticmethod
    def hold(entry: Entry) -> None:
        """One more part of ``entry`` must be confirmed before it is done."""
        entry.parts += 1

    @staticmethod
    def complete(entry: Entry) -> None:
        """One part of ``entry`` was confirmed."""
        entry.parts -= 1
        if entry.parts <= 0:
            entry.done = True

    def hold_for_publish(self, entry: Entry, mid: int) -> None:
        """``entry`` waits for the broker to confirm the publish with packet id ``mid``."""
        entry.parts += 1
        self._publishing[mid] = entry

    def published(self, mid: int) -> bool:
        """The broker confirmed publish ``mid``; return whether it completed a part."""
        entry = self._publishing.pop(mid, None)
        if entry is None:
            return False
        self.complete(entry)
        return True

    @property
    def ready(self) -> bool:
        """Whether the oldest message is done, so :meth:`release` has something to pop."""
        entries = self._entries
        return bool(entries) and entries[0].done

    def release(self, epoch: int) -> list[tuple[int, int]]:
        """Pop the done entries at the front; return ``(mid, qos)`` to acknowledge, in order.

        Only QoS > 0 messages of the current connection ``epoch`` are returned; the others
        are dropped (nothing to ack, or the broker redelivers them).
        """
        entries = self._entries
        acks: list[tuple[int, int]] = []
        while entries and entries[0].done:
            entry = entries.popleft()
            if entry.qos and entry.epoch == epoch:
                acks.append((entry.mid, entry.qos))
        return acks
