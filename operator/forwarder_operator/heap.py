"""Gives the heap memory that a burst of work freed back to the operating system.

At a start with thousands of ScheduledTasks, and whenever thousands of their statuses change
at once, kopf holds every watch event's body in its per-object queues, and its HTTP client
opens a TLS connection (with a 128 KiB read buffer) per request in flight. All of it is freed
once the burst is handled, but glibc's allocator keeps freed memory inside its heap and gives
back only the top of it, so the process's RSS stays at the burst's peak: at 10,000 resources
204 MiB right after all were Ready, 176 MiB once released (a development run of
bench/operator_scale.py). ``malloc_trim`` returns every wholly free page of the heap; Dask's
documentation recommends the same call for the same reason.
There is no library for this one call, hence ctypes. Elsewhere than glibc (musl, macOS) it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS; True if the allocator can (glibc) and did
    release some. Takes a few milliseconds on a heap of a few hundred MiB."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))
