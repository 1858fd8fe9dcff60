"""The ledger: what the simulated gateways emitted, so loss and duplication are measurable.

Per gateway it records batches as they are **created** (numbered and put in the gateway's
spool: from then on the gateway is responsible for them), **published** (each attempt;
a second attempt is a replay of the same bytes with the same seq) and **acknowledged** by the
broker (PUBACK: from then on the platform is responsible). A running CRC-32 over the payloads
in seq order is a digest a subscriber can recompute from what it received.

:func:`compare_with_influx` asks InfluxDB (v1 ``/query``) what it holds for the ledger's
gateways and says, per gateway, how many readings were lost or are extra, and which seqs
the ingest bookkeeping (``ingest_batch``) never saw. :class:`InfluxHttp` reaches an
``https://`` InfluxDB verified against a private CA (``ca_file``), like ingest and the API.
"""

from __future__ import annotations

import json
import ssl
import threading
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from foundation import BrokerSetupError, BrokerTls, InfluxQueryError, influxql, is_loopback
from simulators._errors import LedgerError

__all__ = [
    "GatewayCheck",
    "GatewayRecord",
    "InfluxHttp",
    "InfluxQuerier",
    "Ledger",
    "LedgerReport",
    "compare_with_influx",
]


@dataclass(slots=True)
class GatewayRecord:
    """One gateway's line in the ledger."""

    gateway: str
    first_seq: int = -1
    last_seq: int = -1
    batches: int = 0
    readings: int = 0
    acked_batches: int = 0
    acked_readings: int = 0
    publishes: int = 0
    replays: int = 0
    min_ts: int = 0
    max_ts: int = 0
    digest: int = 0

    @property
    def unacked_batches(self) -> int:
        return self.batches - self.acked_batches


class Ledger:
    """Thread-safe record of what the fleet emitted (the fleet thread writes, anyone reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gateways: dict[str, GatewayRecord] = {}
        self.measurements: set[str] = set()
        self._readings = 0
        self._created = 0
        self._batches = 0

    def _rec(self, gateway: str) -> GatewayRecord:
        rec = self._gateways.get(gateway)
        if rec is None:
            rec = self._gateways[gateway] = GatewayRecord(gateway)
        return rec

    def created(
        self, gateway: str, seq: int, readings: int, min_ts: int, max_ts: int, payload: bytes
    ) -> None:
        with self._lock:
            rec = self._rec(gateway)
            if rec.first_seq < 0:
                rec.first_seq = seq
                rec.min_ts, rec.max_ts = min_ts, max_ts
            rec.last_seq = seq
            rec.batches += 1
            rec.readings += readings
            rec.min_ts = min(rec.min_ts, min_ts)
            rec.max_ts = max(rec.max_ts, max_ts)
            rec.digest = zlib.crc32(payload, rec.digest)
            self._created += readings
            self._batches += 1

    def published(self, gateway: str, *, replay: bool) -> None:
        with self._lock:
            rec = self._rec(gateway)
            rec.publishes += 1
            rec.replays += int(replay)

    def acked(self, gateway: str, readings: int) -> None:
        with self._lock:
            rec = self._rec(gateway)
            rec.acked_batches += 1
            rec.acked_readings += readings
            self._readings += readings

    # -- reading --------------------------------------------------------------------------
    @property
    def readings(self) -> int:
        """Readings in batches the broker acknowledged (what the platform must store)."""
        return self._readings

    @property
    def created_readings(self) -> int:
        """Readings created, acknowledged or still spooled."""
        return self._created

    @property
    def batches(self) -> int:
        return self._batches

    def gateways(self) -> dict[str, GatewayRecord]:
        """A consistent copy of every gateway's record."""
        with self._lock:
            return {g: GatewayRecord(**asdict(r)) for g, r in self._gateways.items()}

    def totals(self) -> dict[str, int]:
        with self._lock:
            recs = list(self._gateways.values())
        return {
            "gateways": len(recs),
            "batches": sum(r.batches for r in recs),
            "readings": sum(r.readings for r in recs),
            "acked_batches": sum(r.acked_batches for r in recs),
            "acked_readings": sum(r.acked_readings for r in recs),
            "replays": sum(r.replays for r in recs),
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "totals": self.totals(),
                "gateways": {g: asdict(r) for g, r in sorted(self.gateways().items())},
            }
        )


class InfluxQuerier(Protocol):
    """Anything that runs InfluxQL and returns InfluxDB's JSON answer
    (``smartcity._localstack.Influxd`` is one; :class:`InfluxHttp` another)."""

    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]: ...


class InfluxHttp:
    """An InfluxDB v1 ``/query`` client for any URL, with optional credentials.

    ``https://``: the server is verified against ``ca_file`` (unset: the system's CA store);
    ``cert_file``/``key_file`` present a client certificate. Credentials over plain http to
    a host that is not on loopback are refused unless ``allow_insecure``. Problems raise
    :class:`LedgerError` naming the argument.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        allow_insecure: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        parts = urlsplit(self.url)
        https = parts.scheme.lower() == "https"
        host = parts.hostname or ""
        if (cert_file is None) != (key_file is None):
            raise LedgerError("cert_file and key_file go together (client certificate)")
        if (ca_file or cert_file) and not https:
            raise LedgerError(f"ca_file, cert_file and key_file need an https:// url, not {url}")
        if username is not None and not https and not is_loopback(host) and not allow_insecure:
            raise LedgerError(
                f"credentials over plain http to a remote InfluxDB ({host}) are refused: use "
                "an https:// url (or allow_insecure for development)"
            )
        self._context: ssl.SSLContext | None = None
        if https:
            tls = BrokerTls(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
            try:
                self._context = tls.ssl_context("")
            except BrokerSetupError as exc:
                raise LedgerError(str(exc)) from exc

    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        return influxql(
            self.url, q, db=db, epoch=epoch, username=self.username, password=self.password,
            context=self._context,
        )


@dataclass(frozen=True, slots=True)
class GatewayCheck:
    gateway: str
    expected: int  # readings the broker acknowledged
    stored: int  # distinct points InfluxDB holds
    lost: int
    extra: int
    expected_batches: int
    stored_batches: int | None  # distinct seqs in ingest_batch, None without bookkeeping
    missing_seqs: int | None


@dataclass(frozen=True, slots=True)
class LedgerReport:
    gateways: dict[str, GatewayCheck] = field(default_factory=dict)

    @property
    def expected(self) -> int:
        return sum(g.expected for g in self.gateways.values())

    @property
    def stored(self) -> int:
        return sum(g.stored for g in self.gateways.values())

    @property
    def lost(self) -> int:
        return sum(g.lost for g in self.gateways.values())

    @property
    def extra(self) -> int:
        return sum(g.extra for g in self.gateways.values())

    @property
    def missing_seqs(self) -> int | None:
        values = [g.missing_seqs for g in self.gateways.values()]
        if any(v is None for v in values):
            return None
        return sum(v for v in values if v is not None)

    def summary(self) -> dict[str, int | None]:
        return {
            "gateways": len(self.gateways),
            "expected": self.expected,
            "stored": self.stored,
            "lost": self.lost,
            "extra": self.extra,
            "missing_seqs": self.missing_seqs,
        }


def _series(answer: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for result in answer.get("results", []):
        yield from result.get("series", []) or []


def _call(influx: InfluxQuerier, q: str, database: str) -> dict[str, Any]:
    try:
        return influx.query(q, db=database)
    except LedgerError:
        raise
    except (InfluxQueryError, OSError, ValueError) as exc:
        # foundation.influxql (behind Influxd and InfluxHttp) raises InfluxQueryError; another
        # querier may raise OSError or ValueError.
        raise LedgerError(f"InfluxDB query failed: {exc}") from exc


def compare_with_influx(
    ledger: Ledger, influx: InfluxQuerier, database: str, *, bookkeeping: str = "ingest_batch"
) -> LedgerReport:
    """Compare the ledger with what ``database`` holds, per gateway.

    ``stored`` is the number of distinct points (measurement + tags + time: a replay
    overwrites itself) in the ledger's time window; ``missing_seqs`` uses the ingest
    bookkeeping measurement when it exists (``None`` otherwise).
    """
    records = ledger.gateways()
    if not records:
        return LedgerReport()
    lo = min(r.min_ts for r in records.values() if r.batches)
    hi = max(r.max_ts for r in records.values() if r.batches)
    window = f"time >= {lo - lo % 1_000_000} AND time <= {hi + 1_000_000}"
    stored: dict[str, int] = dict.fromkeys(records, 0)
    names = sorted(ledger.measurements)
    if names:
        # One statement per measurement, sent together (InfluxQL allows ';'-separated).
        q = ";".join(
            f'SELECT count("quality") FROM "{m}" WHERE {window} GROUP BY "gateway"'  # noqa: S608
            for m in names
        )
        for s in _series(_call(influx, q, database)):
            gw = s.get("tags", {}).get("gateway")
            if gw in stored:
                stored[gw] += int(s["values"][0][1])
    seqs: dict[str, int] | None = None
    answer = _call(influx, f'SHOW MEASUREMENTS WITH MEASUREMENT = "{bookkeeping}"', database)
    if any(True for _ in _series(answer)):
        seqs = dict.fromkeys(records, 0)
        q = (
            f'SELECT count(distinct("seq")) FROM "{bookkeeping}" '  # noqa: S608
            f'WHERE {window} GROUP BY "gateway"'
        )
        for s in _series(_call(influx, q, database)):
            gw = s.get("tags", {}).get("gateway")
            if gw in seqs:
                seqs[gw] = int(s["values"][0][1])
    checks = {}
    for gw, rec in records.items():
        got = stored[gw]
        nseq = None if seqs is None else seqs[gw]
        checks[gw] = GatewayCheck(
            gateway=gw,
            expected=rec.acked_readings,
            stored=got,
            lost=max(rec.acked_readings - got, 0),
            extra=max(got - rec.acked_readings, 0),
            expected_batches=rec.acked_batches,
            stored_batches=nseq,
            missing_seqs=None if nseq is None else max(rec.acked_batches - nseq, 0),
        )
    return LedgerReport(gateways=checks)
