"""``python -m edge_agent run --config FILE``: the same commands as ``smartcity edge``.

``run`` goes straight to the agent's own entry (:mod:`edge_agent._daemon`, same options),
without loading the command line framework that ``smartcity edge run`` replaces itself to
shed: a quicker start, the same process and exit codes.
"""

import sys

if sys.argv[1:2] == ["run"]:
    from edge_agent._daemon import main

    main(sys.argv[2:])
else:
    from edge_agent.cli import app

    app(prog_name="edge_agent")
