"""Make glibc hand freed tensor memory back to the system at once.

A training step allocates its activations (megabytes per tensor) in forward and frees
them in backward. glibc's malloc serves blocks above its mmap threshold with their own
mapping, unmapped on free; below it, from the heap, which keeps freed space. The
threshold starts at 128 KiB but glibc raises it (up to 32 MiB) each time a mapped block
is freed, so after the first step nearly every activation lives in the heap, and the
heap's freed, fragmented space stays resident: measured on SmolLM2-135M with LoRA on all
blocks (batch 8 x 156 tokens), peak RSS 4.2 GB against a 2.9 GiB estimate of the live
tensors. Pinning the threshold at 128 KiB (mallopt M_MMAP_THRESHOLD, which also stops
the raising) kept the peak at 2.8 GB, the estimate.

The cost is a fresh mapping, and its page faults, for every large tensor: the same
LoRA run trained ~20% slower (bench/vs_trl.py: 91-97 against ~120 tokens/s). So it is
opt-in, `train.lean_memory: true`, for when memory is what runs out. Only glibc has
mallopt; on other C libraries this does nothing. A user's own MALLOC_MMAP_THRESHOLD_
wins, and TUNEKIT_MALLOC=default leaves glibc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
THRESHOLD = 128 * 1024
_done = False


def return_freed_memory_promptly() -> bool:
    """Pin glibc's mmap threshold (once per process); True when it was set here."""
    global _done
    if _done or os.environ.get("TUNEKIT_MALLOC") == "default" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    return _done
