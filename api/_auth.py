"""API keys, roles and rate limits.

Roles are ordered; each includes the ones below it::

    viewer  <  operator  <  engineer  <  admin
    read       + acknowledge   + push gateway   + manage keys
               alerts, manage  config
               rules

A key is sent as ``X-API-Key: sck_...`` or ``Authorization: Bearer sck_...``. It is looked
up by its SHA-256 (keys are 256 random bits: a slow hash would protect nothing and cost every
request), and a verified key is cached for ``key_cache_s`` so the hot path does not touch the
database. Requests are limited per key with a token bucket; failed authentications are
limited per client address so a key cannot be guessed at speed (it could not be anyway).
The failure limiter is consulted before a key is looked up: a client out of failure budget
gets 429 for any key the cache does not know, without touching the database.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from api.storage import KEY_PREFIX, Database, hash_key

__all__ = ["KeyVerifier", "Principal", "RateLimiter", "Role"]

_KEY_LEN: Final = len(KEY_PREFIX) + 43
_CACHE_MAX: Final = 50_000


class Role(enum.IntEnum):
    """What a key may do; a higher role can do everything a lower one can."""

    viewer = 1
    operator = 2
    engineer = 3
    admin = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"role {name!r} is not one of {[r.name for r in cls]}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: which key, whose name, what role."""

    key_id: str
    name: str
    role: Role


class KeyVerifier:
    """Turns a presented key into a :class:`Principal` (or ``None``), with a short cache.

    :meth:`cached` answers from memory only; :meth:`verify` looks a cache miss up in the
    database (``on_lookup`` is called for each lookup), so a caller can refuse before any
    database work (the failed-authentication limiter does).
    """

    def __init__(
        self, db: Database, *, ttl: float, on_lookup: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._ttl = ttl
        self._on_lookup = on_lookup
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    @staticmethod
    def well_formed(key: str) -> bool:
        return len(key) == _KEY_LEN and key.startswith(KEY_PREFIX)

    def cached(self, key: str) -> tuple[bool, Principal | None]:
        """``(True, principal or None)`` when the answer is in the cache, else ``(False, None)``;
        a malformed key is answered (``None``) without any lookup."""
        if not self.well_formed(key):
            return True, None
        hit = self._cache.get(hash_key(key))
        if hit is not None and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def known_valid(self, key: str) -> bool:
        """Whether ``key`` verified before (its cache entry may have expired): its lookup is
        a re-check for revocation, not a guess, and is not refused by the failure limiter."""
        if not self.well_formed(key):
            return False
        hit = self._cache.get(hash_key(key))
        return hit is not None and hit[0] is not None

    async def verify(self, key: str) -> Principal | None:
        known, principal = self.cached(key)
        if known:
            return principal
        digest = hash_key(key)
        self._on_lookup()
        row = await asyncio.to_thread(self._db.find_key, digest)
        principal = None if row is None else Principal(row.id, row.name, Role.parse(row.role))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (principal, time.monotonic() + self._ttl)
        return principal

    def invalidate(self) -> None:
        """Forget every cached key (after a revocation in this process)."""
        self._cache.clear()


class RateLimiter:
    """Token buckets by name: ``rate`` tokens per second up to ``burst``."""

    def __init__(self, *, rate: float, burst: int, max_buckets: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max = max_buckets
        self._buckets: dict[str, list[float]] = {}

    def peek(self, name: str) -> float:
        """Seconds until ``name`` has a token (0.0: it has one now); spends nothing."""
        bucket = self._buckets.get(name)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket[0] + (time.monotonic() - bucket[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, name: str) -> float:
        """Spend one token; return 0.0 if allowed, else seconds until one is available."""
        now = time.monotonic()
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.clear()
            bucket = self._buckets[name] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate
