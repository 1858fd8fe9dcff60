"""Commands (``<root>/v1/<gw>/cmd``, MQTT v5 request/response): ``ping``, ``reannounce``,
``health``, ``resend``, ``update`` (:mod:`edge_agent._update`).

A request carries a response topic and correlation data; the answer goes to that topic with
the same correlation. The persistent session may redeliver a request whose PUBACK was lost
with the connection (DUP set): each (response topic, correlation) is answered once (the last
:data:`_ANSWERED_KEPT` are remembered). ``resend`` publishes held batches again by seq (the
platform's gap repair), at most :data:`MAX_RESEND_SEQS` seqs per request.

More handlers are registered by name (:meth:`Commands.register`: ``logs``, ``restart``,
``sync-time-check`` of :mod:`edge_agent._remote_ops`). One that has to wait (``time-sync``
waits for the firmware devices' acks) is registered with :meth:`Commands.register_async`: its
request is queued (at most :data:`MAX_JOBS`; beyond that it is refused as busy) and run by
the agent's ``agent[gw].commands`` task (:meth:`Commands.run_jobs`), each bounded by
:data:`JOB_TIMEOUT_S`; the answer goes out when it finishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from edge_agent._errors import CommandError, SpoolError
from edge_agent._spool import Spool
from edge_agent._uplink import ControlMessage, Uplink
from telemetry import (
    CommandRequest,
    CommandResponse,
    Health,
    PayloadError,
    ReplyAddress,
    decode_message,
    encode_message,
    reply_address,
)

__all__ = ["MAX_RESEND_SEQS", "CommandTarget", "Commands", "parse_resend_args", "resend"]

log: Final = logging.getLogger("edge_agent")
_ANSWERED_KEPT: Final = 256
#: Most seqs one ``resend`` request may name (seqs and ranges together).
MAX_RESEND_SEQS: Final = 10_000
#: Commands waiting for or in the job task at once; more are refused (busy).
MAX_JOBS: Final = 4
#: An async command that takes longer is answered with an error.
JOB_TIMEOUT_S: Final = 30.0

#: A registered command: its ``args`` in, its ``result`` out (:class:`CommandError`: refused).
Handler = Callable[[dict[str, Any]], dict[str, Any]]
AsyncHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class _Job:
    handler: AsyncHandler
    req: CommandRequest
    reply: ReplyAddress
    echo: str | None


class CommandTarget(Protocol):
    """What the commands act on (the agent)."""

    def ping(self) -> dict[str, Any]: ...

    def reannounce(self) -> bool: ...

    def health(self) -> Health: ...

    def resend(self, seqs: list[int]) -> dict[str, Any]: ...

    def update(self, args: dict[str, Any]) -> dict[str, Any]: ...


class Commands:
    """Answers command requests arriving on the uplink, each once."""

    def __init__(self, target: CommandTarget, uplink: Uplink) -> None:
        self.target = target
        self.uplink = uplink
        #: (response topic, correlation) of recently answered commands, oldest first.
        self._answered: dict[tuple[str, bytes], None] = {}
        self._handlers: dict[str, Handler] = {}
        self._async: dict[str, AsyncHandler] = {}
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(MAX_JOBS)

    def register(self, name: str, handler: Handler) -> None:
        """Answer ``name`` with ``handler(args)``."""
        self._handlers[name] = handler

    def register_async(self, name: str, handler: AsyncHandler) -> None:
        """Answer ``name`` with ``await handler(args)``, run by :meth:`run_jobs`."""
        self._async[name] = handler

    async def run_jobs(self) -> None:
        """Run queued async commands one at a time and answer each (until cancelled)."""
        while True:
            job = await self._jobs.get()
            try:
                async with asyncio.timeout(JOB_TIMEOUT_S):
                    result = await job.handler(job.req.args)
                resp = CommandResponse(ok=True, result=result, correlation=job.echo)
            except CommandError as exc:
                resp = CommandResponse(ok=False, error=str(exc), correlation=job.echo)
            except TimeoutError:
                resp = CommandResponse(
                    ok=False, error=f"{job.req.cmd}: not done within {JOB_TIMEOUT_S:g} s",
                    correlation=job.echo,
                )
            self._answer(job.reply, resp)

    def handle(self, msg: ControlMessage) -> None:
        # MQTT v5: the reply address is in the properties; MQTT 3.1.1 (the cluster profile):
        # in the body (reply_to, correlation), so the body is decoded first.
        req: CommandRequest | None = None
        error: PayloadError | None = None
        try:
            req = decode_message(msg.payload, CommandRequest)
        except PayloadError as exc:
            error = exc
        reply = reply_address(
            response_topic=msg.response_topic,
            correlation_data=msg.correlation,
            reply_to=None if req is None else req.reply_to,
            correlation=None if req is None else req.correlation,
        )
        if reply is None:
            log.warning("command without a response topic ignored")
            return
        # The persistent session may redeliver a command whose PUBACK was lost with the
        # connection (DUP set): answer each request once.
        if reply.correlation is not None:
            key = (reply.topic, reply.correlation)
            if msg.redelivered and key in self._answered:
                log.info("redelivered command already answered", extra={"topic": msg.topic})
                return
            self._answered[key] = None
            if len(self._answered) > _ANSWERED_KEPT:
                del self._answered[next(iter(self._answered))]
        echo = req.correlation if reply.in_body and req is not None else None
        try:
            if req is None:
                assert error is not None
                raise error
            handler = self._async.get(req.cmd)
            if handler is not None:
                try:
                    self._jobs.put_nowait(_Job(handler, req, reply, echo))
                    return
                except asyncio.QueueFull:
                    raise CommandError(
                        f"{req.cmd}: busy ({MAX_JOBS} commands waiting), try again"
                    ) from None
            result = self._run(req)
            resp = CommandResponse(ok=True, result=result, correlation=echo)
        except (PayloadError, CommandError) as exc:
            resp = CommandResponse(ok=False, error=str(exc), correlation=echo)
        self._answer(reply, resp)

    def _answer(self, reply: ReplyAddress, resp: CommandResponse) -> None:
        self.uplink.publish_control(
            reply.topic,
            encode_message(resp),
            correlation=None if reply.in_body else reply.correlation,
        )

    def _run(self, req: CommandRequest) -> dict[str, Any]:
        if req.cmd == "ping":
            return self.target.ping()
        if req.cmd == "reannounce":
            return {"published": self.target.reannounce()}
        if req.cmd == "health":
            import msgspec

            result: dict[str, Any] = msgspec.to_builtins(self.target.health())
            return result
        if req.cmd == "resend":
            return self.target.resend(parse_resend_args(req.args))
        if req.cmd == "update":  # edge_agent._update.order_update: a request for the updater
            return self.target.update(req.args)
        handler = self._handlers.get(req.cmd)
        if handler is not None:
            return handler(req.args)
        known = ["ping", "reannounce", "health", "resend", "update", *self._handlers, *self._async]
        raise CommandError(f"unknown command {req.cmd!r} (known: {', '.join(known)})")


def resend(spool: Spool, uplink: Uplink, seqs: list[int]) -> dict[str, Any]:
    """Publish again the held batches with these seqs (the ``resend`` command)."""
    try:
        found = spool.redeliver(seqs)
    except SpoolError as exc:
        raise CommandError(f"cannot read the spool: {exc}") from exc
    uplink.resend(found.requeued)
    log.info(
        "resend requested",
        extra={
            "requested": len(seqs),
            "requeued": len(found.requeued),
            "waiting": found.waiting,
            "missing": len(found.missing),
        },
    )
    return {
        "found": found.found,
        "missing": found.missing,
        "requeued": len(found.requeued),
        "waiting": found.waiting,
    }


def parse_resend_args(args: dict[str, Any]) -> list[int]:
    """The distinct seqs of a ``resend`` request: ``{"seqs": [3, 7], "ranges": [[10, 20]]}``
    (ranges inclusive, either key optional, at most :data:`MAX_RESEND_SEQS` in all)."""
    unknown = set(args) - {"seqs", "ranges"}
    if unknown:
        raise CommandError(f"resend: unknown argument(s) {sorted(unknown)} (known: seqs, ranges)")
    seqs_arg = args.get("seqs", [])
    ranges_arg = args.get("ranges", [])
    if not isinstance(seqs_arg, list) or not isinstance(ranges_arg, list):
        raise CommandError("resend: seqs and ranges must be lists")
    if not seqs_arg and not ranges_arg:
        raise CommandError("resend: give seqs and/or ranges")

    def seq(v: object, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CommandError(f"resend: {where} must be a non-negative integer, not {v!r}")
        return v

    out: set[int] = {seq(v, f"seqs[{i}]") for i, v in enumerate(seqs_arg)}
    if len(out) > MAX_RESEND_SEQS:
        raise CommandError(f"resend: more than {MAX_RESEND_SEQS} seqs in one request")
    for i, r in enumerate(ranges_arg):
        if not isinstance(r, list) or len(r) != 2:
            raise CommandError(f"resend: ranges[{i}] must be [from, to]")
        lo, hi = seq(r[0], f"ranges[{i}][0]"), seq(r[1], f"ranges[{i}][1]")
        if lo > hi:
            raise CommandError(f"resend: ranges[{i}] goes backwards ({lo} > {hi})")
        if hi - lo + 1 + len(out) > MAX_RESEND_SEQS:
            raise CommandError(f"resend: more than {MAX_RESEND_SEQS} seqs in one request")
        out.update(range(lo, hi + 1))
    return sorted(out)
