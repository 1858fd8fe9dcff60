"""The agent's own process: ``python -P -m edge_agent._daemon --config FILE``.

::

    smartcity edge run ...  ─┐  typer parses the options, then os.execv (same pid, environment,
    python -m edge_agent run ┘  working directory and systemd notify socket)
        └─▶ python -P -m edge_agent._daemon --config FILE --log-level L [--log-format F]
              tune_malloc ─▶ configure_logging ─▶ load_checked (exit 78) ─▶ run_agent

The command line framework (typer and its click) is needed to read the command line, not to
run the agent: replacing the process keeps it out of the gateway's resident memory (about
2 MB, ``bench/edge_pipeline.py``). ``-P``: the working directory is not put on
``sys.path`` (a stray ``numpy.py`` next to it cannot shadow a package).

Exit codes are ``edge run``'s: 78 (EX_CONFIG) for a config problem (invalid, or naming files
that are not usable here, or TLS files and credentials that became unusable meanwhile), which
the systemd unit does not restart; 1 for a failure; after a ``restart`` command 75 under
systemd, else the process replaces itself with a fresh daemon
(:func:`edge_agent._remote_ops.restart_process`), which checks the config again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import NoReturn

from edge_agent._agent import run_agent
from edge_agent._errors import ConfigError, EdgeError, UplinkError
from edge_agent._memory import tune_malloc
from edge_agent._preflight import load_checked
from edge_agent._remote_ops import restart_process
from foundation import configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m edge_agent._daemon",
        description="The edge agent's process (started by `edge run`).",
    )
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--log-format", choices=("json", "console"), default=None)
    return ap


def main(argv: list[str] | None = None) -> NoReturn:
    """Check the config, run the agent until SIGTERM/SIGINT, exit with ``edge run``'s code."""
    args = _parser().parse_args(argv)
    tune_malloc()
    configure_logging(args.log_level, args.log_format)
    try:
        cfg, _notes = load_checked(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(os.EX_CONFIG)
    try:
        restart = asyncio.run(run_agent(cfg))
    except UplinkError as exc:  # TLS files or credentials that became unusable meanwhile
        print(f"edge agent: config problem: {exc}", file=sys.stderr)
        sys.exit(os.EX_CONFIG)
    except EdgeError as exc:
        print(f"edge agent failed: {exc}", file=sys.stderr)
        sys.exit(1)
    if restart:
        restart_process()
    sys.exit(0)


if __name__ == "__main__":
    main()
