"""The operator dashboard: static ES modules served by the API, no build step.

:func:`mount_dashboard` mounts the files of this package at ``/dashboard/`` (and redirects
``/`` there). The page signs in with an API key kept in ``sessionStorage`` only and reads
everything through the public API (REST and the ``/v1/stream/ws`` WebSocket). The assets
contain no secrets, so they are served without a key, with a strict Content-Security-Policy.
``docs/dashboard.md`` is the guide.
"""

from api.dashboard._mount import (
    ASSETS,
    CSP,
    DASHBOARD_PATH,
    DashboardConfig,
    content_security_policy,
    dashboard_config,
    mount_dashboard,
)

__all__ = [
    "ASSETS",
    "CSP",
    "DASHBOARD_PATH",
    "DashboardConfig",
    "content_security_policy",
    "dashboard_config",
    "mount_dashboard",
]
