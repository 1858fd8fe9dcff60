"""The agent's C heap on small gateways: glibc malloc settings and handing freed memory back.

- :func:`tune_malloc` (``edge run``, before the agent starts): at most two malloc arenas
  (each thread that allocates would otherwise get one, each keeping freed memory resident),
  and fixed mmap/trim thresholds. glibc raises both thresholds on its own once a large
  block is freed, after which every large temporary (a checkpoint blob, a batch payload,
  SQLite's page buffers) comes from the heap, and the heap keeps its high-water mark. Fixed,
  blocks of 128 KiB or more are mapped and unmapped on their own, and the heap is trimmed
  back when 256 KiB at its top are free.
- :func:`release_free_memory` (once the agent runs, then with each spool prune): freed
  pages inside the heap, which trimming at the top cannot reach, go back to the kernel
  (``malloc_trim``). Start-up leaves the most of them: config validation, schema building
  and imports free what they used.

Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Final

__all__ = ["release_free_memory", "tune_malloc"]

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8

_ARENAS: Final = 2
_MMAP_THRESHOLD: Final = 128 * 1024
_TRIM_THRESHOLD: Final = 256 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl has neither)
    return libc


def tune_malloc() -> None:
    """Two arenas, fixed mmap and trim thresholds (see the module docstring)."""
    libc = _libc()
    if libc is None:
        return
    libc.mallopt(_M_ARENA_MAX, _ARENAS)
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def release_free_memory() -> None:
    """Give the free pages of every malloc arena back to the kernel."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
