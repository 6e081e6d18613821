"""Give the C allocator's free memory back to the system every few seconds.

glibc serves a request for 128 KiB or more with a map of its own, unmapped when freed,
but the first time such a block is freed it raises that threshold to the block's size
(up to 32 MiB): later buffers of that size come from the heap, which shrinks only from
its top. A broker's large buffers (fetch responses, encoded request batches) then stay
in its resident set long after they were answered: twenty unread 30 MB fetch responses
left 1.2 GB resident once their connections had closed.

Fixing the threshold would return each buffer at once, but every large buffer would
then be a fresh map whose pages fault in: in ``bench/produce_consume.py`` that cost
about a third more broker CPU per record. ``malloc_trim`` every few seconds returns the
same memory (the free pages inside the heap too, not only its top) for one walk of the
free lists.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

TRIM_INTERVAL_S = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where there is none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


async def return_free_memory(interval_s: float = TRIM_INTERVAL_S) -> None:
    """Run until cancelled: hand free memory back to the system every ``interval_s``."""
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        trim(0)
