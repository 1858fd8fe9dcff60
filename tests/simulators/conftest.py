"""Simulator tests: helpers live in ``sim_helpers`` (this directory is not a package)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
