"""Which packages an unlocked install moved against a lock.

Reads ``pip freeze`` output on stdin and the lock file named on the command line, and prints
one line per package whose version differs (or that only one side has), then a summary line.
Used by ``make test-latest``; exits 0 whatever it finds, since moving is what it measures.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+))?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(marker: str | None) -> bool:
    """Whether an environment marker holds for the running interpreter."""
    if not marker:
        return True
    from packaging.markers import Marker

    return bool(Marker(marker.strip()).evaluate())


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if match is not None and _applies(match.group(3)):
            # A lock may pin one package twice under different markers; keep the first.
            pins.setdefault(_canonical(match.group(1)), match.group(2))
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: pip freeze | python requirements/compare.py requirements/dev.txt")
        return 2
    locked = _pins(Path(argv[1]).read_text().splitlines())
    installed = _pins(sys.stdin.read().splitlines())
    moved = 0
    for name in sorted(locked.keys() | installed.keys()):
        old, new = locked.get(name, "-"), installed.get(name, "-")
        if old != new:
            moved += 1
            print(f"  {name}: {old} -> {new}")
    print(f"{moved} of {len(locked)} locked packages differ in the unlocked resolution")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
