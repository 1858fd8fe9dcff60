"""Capped, jittered exponential backoff: the one reconnect schedule of every service."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "BackoffConfigError"]


class BackoffConfigError(ValueError):
    """A backoff setting is out of range; ``key`` names it (``backoff.maximum``)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter for reconnects.

    Attempt ``n`` (from 0) waits ``min(maximum, initial * multiplier**n)`` scaled by a
    random factor in ``[1 - jitter, 1]``, so a fleet of gateways that lost the same
    substation does not retry in lock-step.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for key, value in (("backoff.initial", self.initial), ("backoff.maximum", self.maximum)):
            if not value > 0:
                raise BackoffConfigError(key, f"must be > 0, got {value!r}")
        if self.maximum < self.initial:
            raise BackoffConfigError("backoff.maximum", "must be >= backoff.initial")
        if self.multiplier < 1:
            raise BackoffConfigError(
                "backoff.multiplier", f"must be >= 1, got {self.multiplier!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise BackoffConfigError(
                "backoff.jitter", f"must be within [0, 1], got {self.jitter!r}"
            )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        exp = min(attempt, 64)
        base = min(self.maximum, self.initial * self.multiplier**exp)
        u = (rng or random).random()
        return base * (1.0 - self.jitter * u)
