"""Have the C allocator give large freed buffers back to the system at once.

glibc serves a request for 128 KiB or more with a map of its own, unmapped when freed,
but the first time such a block is freed it raises that threshold to the block's size
(up to 32 MiB): later buffers of that size come from the heap, which shrinks only from
its top. A broker's large buffers (fetch responses, encoded request batches) then stay
in its resident set long after they were answered: twenty unread 30 MB fetch responses
left 1.2 GB resident once their connections had closed. A fixed threshold (which turns
the adjustment off) returns them with the connections.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter (malloc.h)."""
MMAP_THRESHOLD = 128 * 1024
"""glibc's default, kept fixed."""


def return_large_buffers() -> None:
    """Fix glibc's map threshold; nothing where there is no ``mallopt`` (macOS)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
