"""The alert rules the API ships: seeded into a new operator database, and brought up to
date in an existing one where nobody edited them (``Database.create_schema``)."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_RULES"]

DEFAULT_RULES: Final = (
    {"name": "PM2.5 above 35 ug/m3 for 10 minutes", "kind": "threshold",
     "measurement": "AirQualityObserved", "field": "pm25", "op": ">", "threshold": 35.0,
     "duration_s": 600.0, "severity": "warning"},
    {"name": "Gateway offline for 5 minutes", "kind": "staleness", "duration_s": 300.0,
     "severity": "critical"},
    # Held for five minutes: one slow reading is not a jam, and a link hovering at the limit
    # does not raise and resolve an alert again and again. Measured on the simulator's
    # morning rush hour (tests/api/test_api_alert_rules.py): a link near the limit raised
    # up to 91 alerts in 2.5 h at 0 s, 4 at 2 minutes, 1 at 5 minutes.
    {"name": "Link speed under 30% of free flow for 5 minutes", "kind": "congestion",
     "measurement": "TrafficFlowObserved", "field": "averageVehicleSpeed", "ratio": 0.3,
     "duration_s": 300.0, "severity": "warning"},
)


#: Rules earlier releases seeded, as (name, kind, duration_s), and what replaces each. A
#: database keeps its rules across upgrades; only a shipped rule still exactly as shipped
#: (same name, kind and duration: nobody edited it) is brought up to today's default.
_SUPERSEDED_RULES: Final = {
    ("Link speed under 30% of free flow", "congestion", 0.0): DEFAULT_RULES[2],
    ("Link speed under 30% of free flow for 2 minutes", "congestion", 120.0): DEFAULT_RULES[2],
}
