"""Inputs run on their own: a failed input is counted and restarted, the others carry on.

::

    inputs[gw].supervisor ── TaskGroup ─┬─ input[a].run ─ supervise(a) ─ a.run(sink) ...
                                        └─ input[b].run ─ supervise(b) ─ b.run(sink) ...

    supervise(input):   run ──raises──▶ failed (logged with the input's name, counted)
                         ▲                 │ foundation.Backoff: 0.5 s, 1 s, ... 60 s, jittered
                         └── restarting ◀──┘ (attempts reset after a run longer than 60 s)

The input's state (health ``links``) is ``failed`` while it waits for its restart, then
``restarting`` until the input reports its own (``up`` once connected).

An input whose task raises (a bug, a device that makes a library raise what it should not)
is never allowed to end the task group: that would stop every other input and then the
agent. Only cancellation (stop, config swap) ends a supervised input. Counters live here,
not in the inputs, so they survive config swaps: failures per input, and what the inputs
could not parse (stage ``input_parse``) per channel and per reason. Both tables are bounded:
a hostile sensor that invents a topic per message adds one channel, ``<input>:(other)``,
past :data:`MAX_DROP_CHANNELS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from edge_agent.inputs import Input, Sink
from foundation import Backoff

__all__ = ["INPUT_PARSE", "MAX_DROP_CHANNELS", "InputCounters", "supervise"]

log: Final = logging.getLogger("edge_agent")

#: The drop stage of messages an input could not turn into readings.
INPUT_PARSE: Final = "input_parse"
#: Distinct channels counted per drop stage, and reasons per input; the rest are folded.
MAX_DROP_CHANNELS: Final = 256
RESTART_BACKOFF: Final = Backoff(initial=0.5, maximum=60.0)


class InputCounters:
    """Input failures, rejected messages and dropped samples, bounded (see module doc)."""

    def __init__(self) -> None:
        #: stage -> channel -> samples dropped
        self.drops: dict[str, dict[str, int]] = {}
        #: input -> reason -> messages rejected
        self.rejects: dict[str, dict[str, int]] = {}
        #: input -> times its task failed
        self.failures: dict[str, int] = {}

    def count_drop(self, stage: str, channel: str, n: int = 1) -> None:
        per = self.drops.setdefault(stage, {})
        if channel not in per and len(per) >= MAX_DROP_CHANNELS:
            channel = "(other)"
        per[channel] = per.get(channel, 0) + n

    def count_reject(self, input_name: str, reason: str, where: str) -> None:
        per = self.drops.setdefault(INPUT_PARSE, {})
        channel = f"{input_name}:{where}"
        if channel not in per and len(per) >= MAX_DROP_CHANNELS:
            channel = f"{input_name}:(other)"
        per[channel] = per.get(channel, 0) + 1
        reasons = self.rejects.setdefault(input_name, {})
        if reason not in reasons and len(reasons) >= MAX_DROP_CHANNELS:
            reason = "other"
        reasons[reason] = reasons.get(reason, 0) + 1


async def supervise(
    inp: Input, sink: Sink, counters: InputCounters, *, backoff: Backoff = RESTART_BACKOFF
) -> None:
    """Run ``inp`` until cancelled, restarting it with ``backoff`` whenever it fails."""
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            await inp.run(sink)
            raise RuntimeError("input returned; inputs run until cancelled")
        # A supervisor: whatever ends the input's task except cancellation is counted,
        # logged with its traceback, shown as the input's state, and restarted.
        except Exception as exc:  # noqa: BLE001
            failure = exc
        if time.monotonic() - started >= backoff.maximum:
            attempt = 0  # it ran for a while: a new failure, not a crash loop
        counters.failures[inp.name] = counters.failures.get(inp.name, 0) + 1
        delay = backoff.delay(attempt)
        attempt += 1
        inp.state = "failed"
        inp.last_error = f"{type(failure).__name__}: {failure}"
        log.error(
            f"input {inp.name} failed, restarting in {delay:.1f}s: {failure!r}",
            extra={
                "input": inp.name,
                "failures": counters.failures[inp.name],
                "delay_s": round(delay, 3),
            },
            exc_info=failure,
        )
        await asyncio.sleep(delay)
        inp.state = "restarting"
