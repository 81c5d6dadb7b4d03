"""How the C allocator holds on to memory in a long-running component.

Frames, segments and tensors are buffers of a few megabytes, made and freed many times a second on
several threads. glibc's malloc, left to itself, raises its mmap threshold to the largest block freed
so far: from then on such buffers come from its heaps, one arena per thread, and what is freed there
mostly stays in the process. Over a soak (hack/soak.py) that reads as slow growth.
A fixed threshold keeps every buffer of 1 MiB or more in a mapping of its own, given back to the
system when freed, and two arenas bound the heaps that smaller blocks fragment."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 4 << 20
ARENAS = 2


def keep_malloc_from_hoarding() -> bool:
    """Sets glibc's malloc as the module says; False where the C library is not glibc (nothing done)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    # Setting the mmap threshold also turns off glibc's raising of it.
    done = [
        libc.mallopt(option, value)
        for option, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_ARENA_MAX, ARENAS),
        )
    ]
    return all(done)


def freeze_what_started() -> None:
    """Moves every object alive now (modules, classes, functions, the component's own state) out of
    the cyclic collector's sight. A full collection walks every tracked object while the loop waits:
    about 120,000 of them once a mesh's components have started, 80 to 130 ms a pass on these
    machines, against a few ms once they are frozen (tests/integration/test_loop_lag.py saw it). What
    startup made and dropped stays too; that is a bounded one-off."""
    gc.freeze()
