"""The ingest worker's pure steps timed in the benchmark's process (``--stages``).

Imported by bench/ingest.py (run as a script, its directory is on ``sys.path``, so the
project's ``ingest`` package is imported here only after that path is fixed).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

from _ingest_ceilings import ROOT

from telemetry import LineProtocolEncoder, Topics

__all__ = ["bench_stages"]

REPO = Path(__file__).resolve().parent.parent


def bench_stages(messages: list[tuple[str, bytes]], readings: int) -> dict[str, float]:
    """CPU ns per reading of each pure step of the worker, best of 5, in this process."""
    # bench/ingest.py is "ingest" on sys.path[0] (bench/): import the package from the repo.
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("ingest", None)
    from ingest._batcher import MessageDecoder
    from ingest._writer import _body
    from telemetry import Conformer, Intake
    from telemetry._codec import _batch_decoder, _check_batch_names

    def best(fn: Any) -> float:
        times = []
        for _ in range(5):
            gc.collect()
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return min(times) * 1e9 / readings

    payloads = [p for _, p in messages]
    batches = [_batch_decoder.decode(p) for p in payloads]
    now = time.time()
    now_ns = int(now * 1e9)
    topics = Topics(ROOT)
    enc = LineProtocolEncoder()
    out: dict[str, float] = {}
    out["msgspec_decode"] = best(lambda: [_batch_decoder.decode(p) for p in payloads])
    out["check_names"] = best(lambda: [_check_batch_names(b) for b in batches])

    def conform() -> None:
        c = Conformer(max_clock_skew_s=300, max_series_per_gateway=20_000)
        for b in batches:
            c.conform_all(b.readings, now_ns, gateway=b.gateway)

    out["conform"] = best(conform)
    out["line_protocol"] = best(lambda: [enc.line_list(b.gateway, b.readings) for b in batches])

    def intake() -> None:  # conform + line protocol in one pass, as the worker does
        i = Intake(max_clock_skew_s=300, max_series_per_gateway=20_000)
        for b in batches:
            i.encode(b.gateway, b.readings, now_ns)

    out["intake_conform_and_encode"] = best(intake)

    def decode_all() -> list[Any]:
        d = MessageDecoder(topics, worker="w", max_clock_skew=300, max_series_per_gateway=20_000)
        return [d.decode(t, p, dup=False, now=now)[0] for t, p in messages]

    out["message_decoder_total"] = best(decode_all)
    chunks = decode_all()
    out["request_body"] = best(
        lambda: [_body([c.body for c in chunks[i : i + 50]]) for i in range(0, len(chunks), 50)]
    )
    return {k: round(v) for k, v in out.items()}
