"""The ``resend`` command's contract: its arguments and its answer (``docs/wire-protocol.md``,
Commands). Pure: every gateway (the edge agent, the simulated fleet) parses a request and
builds its answer with these, so both speak exactly the same way.

::

    request  {"v": 1, "cmd": "resend", "args": {"seqs": [4711], "ranges": [[4800, 4849]]}}
                 └─ parse_resend_args ─▶ sorted distinct seqs (at most MAX_RESEND_SEQS)
    answer   {"found": n, "missing": [seqs not held], "requeued": n, "waiting": n}
                 └─ resend_result(requeued=..., waiting=..., missing=...)

``found`` = ``requeued`` (held, acknowledged, published again) + ``waiting`` (held, not
acknowledged yet: already on their way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from telemetry._errors import InvalidPayload

__all__ = [
    "MAX_RESEND_SEQS",
    "InvalidCommand",
    "ReplyAddress",
    "parse_resend_args",
    "reply_address",
    "resend_result",
]

#: Most seqs one ``resend`` request may name (seqs and ranges together).
MAX_RESEND_SEQS: Final = 10_000


class InvalidCommand(InvalidPayload):
    """A command request whose ``args`` break the contract (answered ``ok: false``)."""

    kind = "invalid_command"


def parse_resend_args(args: Mapping[str, Any]) -> list[int]:
    """The distinct seqs of a ``resend`` request: ``{"seqs": [3, 7], "ranges": [[10, 20]]}``
    (ranges inclusive, either key optional, at most :data:`MAX_RESEND_SEQS` in all), sorted.

    Raises :class:`InvalidCommand` naming the argument. Ranges are checked against the
    limit before they are expanded, so ``[[0, 2**62]]`` costs nothing.
    """
    unknown = set(args) - {"seqs", "ranges"}
    if unknown:
        raise InvalidCommand(f"resend: unknown argument(s) {sorted(unknown)} (known: seqs, ranges)")
    seqs_arg = args.get("seqs", [])
    ranges_arg = args.get("ranges", [])
    if not isinstance(seqs_arg, list) or not isinstance(ranges_arg, list):
        raise InvalidCommand("resend: seqs and ranges must be lists")
    if not seqs_arg and not ranges_arg:
        raise InvalidCommand("resend: give seqs and/or ranges")

    def seq(v: object, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidCommand(f"resend: {where} must be a non-negative integer, not {v!r}")
        return v

    out: set[int] = {seq(v, f"seqs[{i}]") for i, v in enumerate(seqs_arg)}
    if len(out) > MAX_RESEND_SEQS:
        raise InvalidCommand(f"resend: more than {MAX_RESEND_SEQS} seqs in one request")
    for i, r in enumerate(ranges_arg):
        if not isinstance(r, list) or len(r) != 2:
            raise InvalidCommand(f"resend: ranges[{i}] must be [from, to]")
        lo, hi = seq(r[0], f"ranges[{i}][0]"), seq(r[1], f"ranges[{i}][1]")
        if lo > hi:
            raise InvalidCommand(f"resend: ranges[{i}] goes backwards ({lo} > {hi})")
        if hi - lo + 1 + len(out) > MAX_RESEND_SEQS:
            raise InvalidCommand(f"resend: more than {MAX_RESEND_SEQS} seqs in one request")
        out.update(range(lo, hi + 1))
    return sorted(out)


def resend_result(*, requeued: int, waiting: int, missing: Sequence[int]) -> dict[str, Any]:
    """The ``result`` of a successful ``resend`` answer."""
    return {
        "found": requeued + waiting,
        "missing": list(missing),
        "requeued": requeued,
        "waiting": waiting,
    }


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Where and how a command's answer goes.

    ``in_body``: the request came in the MQTT 3.1.1 form (``reply_to``/``correlation`` in
    its body), so the answer echoes ``correlation`` in its body and carries no properties;
    otherwise ``correlation`` goes back as the v5 ``CorrelationData`` property.
    """

    topic: str
    correlation: bytes | None
    in_body: bool


def reply_address(
    *,
    response_topic: str | None,
    correlation_data: bytes | None,
    reply_to: str | None,
    correlation: str | None,
) -> ReplyAddress | None:
    """The answer's address: the v5 properties when the request carried a response topic,
    else the 3.1.1 body fields; ``None`` when neither names one (the request is ignored)."""
    if response_topic is not None:
        return ReplyAddress(response_topic, correlation_data, in_body=False)
    if reply_to is not None:
        return ReplyAddress(
            reply_to, None if correlation is None else correlation.encode(), in_body=True
        )
    return None
