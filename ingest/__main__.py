"""``python -m ingest run --config FILE``: the same as ``smartcity ingest run``."""

from ingest.cli import app

app(prog_name="python -m ingest")
