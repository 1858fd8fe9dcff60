"""Structured logs: extra keys come out as JSON fields or key=value pairs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from foundation import ConsoleFormatter, JsonFormatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "ingest", "levelno": logging.INFO, "levelname": "INFO", "msg": "batch %s"}
    )
    record.args = ("written",)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_extra_keys() -> None:
    line = JsonFormatter().format(_record(gateway="gw-1", readings=100))
    entry = json.loads(line)
    assert entry["event"] == "batch written"
    assert entry["level"] == "info"
    assert entry["logger"] == "ingest"
    assert entry["gateway"] == "gw-1"
    assert entry["readings"] == 100
    assert entry["timestamp"].endswith("+00:00")


def test_console_lines_are_key_value() -> None:
    line = ConsoleFormatter().format(_record(gateway="gw 1", readings=3))
    assert "batch written" in line
    assert "gateway='gw 1'" in line
    assert "readings=3" in line


def test_logging_does_not_load_a_rich_text_stack() -> None:
    code = (
        "import sys\nfrom foundation import configure_logging\n"
        "configure_logging('INFO', 'json')\n"
        "print('rich' in sys.modules or 'pygments' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
