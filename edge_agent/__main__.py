"""``python -m edge_agent run --config FILE``: the same commands as ``smartcity edge``."""

from edge_agent.cli import app

app(prog_name="edge_agent")
