"""Pure parts of the gateway-operations work: reference expansion, the sd_notify client,
the local endpoint's handling of bad requests."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent._expand import MAX_FILE_BYTES, expand_references
from edge_agent._local import LocalEndpoint
from edge_agent._notify import Notifier, parse_stall


def test_expansion_touches_string_values_only_and_reads_each_value_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("${B}\n\n")
    data = {"${A}": "${A}", "n": 3, "l": ["x${A}y", "${file:f}", True, None], "d": {"k": "$${A}"}}
    out, issues = expand_references(data, base_dir=tmp_path, env={"A": "1", "B": "2"})
    assert issues == []
    # keys are not expanded; a value read from a file is not expanded again
    assert out == {"${A}": "1", "n": 3, "l": ["x1y", "${B}", True, None], "d": {"k": "${A}"}}
    assert data["l"][0] == "x${A}y"  # the input is not modified


def test_expansion_reports_every_bad_reference_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    data = {"a": {"b": ["${NOPE}", "${file:}", "${file:big}", "${file:bin}", "${1x}", "${}"]}}
    _, issues = expand_references(data, base_dir=tmp_path, env={})
    got = [(i.path, i.reason.split(":")[0]) for i in issues]
    assert [p for p, _ in got] == [f"a.b[{i}]" for i in range(6)]
    assert "NOPE is not set" in issues[0].reason
    assert "empty" in issues[1].reason
    assert "larger than" in issues[2].reason
    assert "not UTF-8" in issues[3].reason
    assert "bad reference" in issues[4].reason
    assert "bad reference" in issues[5].reason


@given(st.text(alphabet="ab${}:", max_size=30))
def test_expansion_never_raises_and_a_text_without_references_is_unchanged(text: str) -> None:
    out, issues = expand_references({"k": text}, base_dir=Path("/nonexistent"), env={"a": "A"})
    if "$" not in text:
        assert out == {"k": text}
        assert issues == []


def test_notifier_sends_to_an_abstract_socket_and_pings_only_with_a_watchdog() -> None:
    name = f"sc-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert n.enabled
        assert n.watchdog_s == 2.0
        assert n.notify("READY=1")
        assert s.recv(100) == b"READY=1"
    assert not Notifier({}).enabled
    assert not Notifier({}).notify("READY=1")
    other_pid = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_s is None  # the watchdog is for another process
    assert parse_stall("2:3") == (2.0, 3.0)
    assert parse_stall("x") is None
    assert parse_stall("1:0") is None


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"nonsense\r\n\r\n", b"400"),
        (b"GET /healthz\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"y" * 10_000 + b"\r\n\r\n", b"431"),
        (b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n", b"400"),
    ],
)
def test_local_endpoint_answers_bad_requests_with_4xx(request_bytes: bytes, status: bytes) -> None:
    def no_snapshot() -> object:
        raise AssertionError("not reached")

    async def main() -> bytes:
        async with LocalEndpoint(no_snapshot, tcp=("127.0.0.1", 0), unix_path=None) as ep:  # type: ignore[arg-type]
            reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
            writer.write(request_bytes)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer

    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
