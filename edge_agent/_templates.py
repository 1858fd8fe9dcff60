"""Files ``smartcity edge init`` writes, shipped inside the package (``edge_agent/templates``).

``edge.yaml`` is a commented example config; ``smartcity-edge.service`` the systemd unit,
with ``@SMARTCITY@`` (the ``smartcity`` executable of this installation), ``@CONFIG@`` (the
config file) and ``@EXAMPLE@`` (the example config, the unit's ``Documentation=``) filled in.
``deploy/smartcity-edge.service`` is this unit rendered for ``/opt/smartcity/venv`` and
``/etc/smartcity-edge`` (a test keeps the two equal).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_CONFIG", "DEFAULT_SMARTCITY", "render_unit", "template_text"]

DEFAULT_SMARTCITY: Final = Path("/opt/smartcity/venv/bin/smartcity")
DEFAULT_CONFIG: Final = Path("/etc/smartcity-edge/edge.yaml")


def template_text(name: str) -> str:
    """A shipped template's text (``edge.yaml``, ``smartcity-edge.service``)."""
    return files("edge_agent").joinpath("templates", name).read_text(encoding="utf-8")


def render_unit(
    *,
    smartcity: Path = DEFAULT_SMARTCITY,
    config: Path = DEFAULT_CONFIG,
    example: Path | None = None,
) -> str:
    """The systemd unit for this ``smartcity`` executable and config file."""
    for p in (smartcity, config):
        if any(c.isspace() for c in str(p)):
            raise ValueError(f"path with whitespace cannot go in the unit: {p!r}")
    example = example or config.with_name("edge.example.yaml")
    return (
        template_text("smartcity-edge.service")
        .replace("@SMARTCITY@", str(smartcity))
        .replace("@CONFIG@", str(config))
        .replace("@EXAMPLE@", str(example))
    )
