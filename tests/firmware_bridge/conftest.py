"""Firmware-bridge tests import their helpers as ``fw_helpers`` (test dirs are not packages)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
