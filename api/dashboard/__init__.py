"""The operator dashboard: static ES modules served by the API, no build step.

:func:`mount_dashboard` serves this folder at ``/dashboard/`` (third-party files in
``vendor/``) with a strict Content-Security-Policy; the page reads everything through the
public API with a key kept in ``sessionStorage`` only. ``docs/dashboard.md`` is the guide.
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
