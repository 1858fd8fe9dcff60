"""The one set of sending rules (``foundation.SendPolicy``) the edge agent and the simulated
fleet both follow: window, PUBACK reasons, the 0x10 hold."""

from __future__ import annotations

import random

import pytest

from foundation import Backoff, SendPolicy, UnroutedHold


def test_the_window_is_the_smaller_of_the_policy_and_the_session() -> None:
    policy = SendPolicy(window=16)
    assert policy.free(0) == 16
    assert policy.free(10) == 6
    assert policy.free(10, session_window=12) == 2
    assert policy.free(20, session_window=12) == 0
    with pytest.raises(ValueError, match="window"):
        SendPolicy(window=0)


@pytest.mark.parametrize(
    ("reason", "retry", "verdict"),
    [
        (0x00, True, "delivered"),
        (0x10, True, "unrouted"),
        (0x10, False, "delivered"),  # a bare broker: what it took counts
        (0x7F, True, "delivered"),
        (0x80, True, "refused"),
        (0x87, False, "refused"),
        (0x97, True, "refused"),
    ],
)
def test_a_puback_reason_has_one_meaning(reason: int, retry: bool, verdict: str) -> None:
    assert SendPolicy(window=1, retry_unrouted=retry).verdict(reason) == verdict


def test_a_burst_of_unrouted_acks_starts_one_hold_that_doubles_up_to_its_cap() -> None:
    hold = UnroutedHold(Backoff(initial=0.2, maximum=1.0, multiplier=2.0, jitter=0.0))
    assert not hold.holding
    assert not hold.ready(0.0)
    assert hold.hold(10.0)
    assert not hold.hold(10.05)  # the same burst
    assert hold.until == pytest.approx(10.2)
    assert not hold.ready(10.1)
    assert hold.ready(10.2)
    waits = []
    for _ in range(4):
        hold.release()
        hold.hold(0.0)
        waits.append(hold.until)
    assert waits == pytest.approx([0.4, 0.8, 1.0, 1.0])
    hold.release()
    hold.delivered()  # someone subscribes again: the next hold is short
    hold.hold(0.0)
    assert hold.until == pytest.approx(0.2)
    assert hold.attempt == 1


def test_the_default_hold_is_jittered_between_half_and_all_of_its_step() -> None:
    rng = random.Random(7)
    firsts = []
    for _ in range(200):
        hold = SendPolicy(window=1).unrouted_hold()
        hold.hold(0.0, rng)
        assert hold.until is not None
        firsts.append(hold.until)
    assert 0.1 <= min(firsts) < 0.12
    assert 0.18 < max(firsts) <= 0.2
