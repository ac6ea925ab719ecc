"""The host memory policy: memory a batch frees stays in the process for the next batch.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap``
and hands it back to the kernel on ``free``. B0's activations are such blocks (a 256-image
inference batch at 160 px: 256 x 32 x 80 x 80 float32 = 210 MB), so every batch of every pass
asked the kernel for new zeroed pages and faulted each one in: on 2 CPU cores a whole CIFAR-100-LT
study spent 1,936 s of its 8,379 CPU-seconds in the kernel (1.25 billion minor page faults), and a
feature pass nearly half its time. With ``keep_freed_memory`` glibc serves large blocks from its
heap and keeps what is freed there (trimmed only above ``TRIM_THRESHOLD_BYTES``), so the next batch
reuses pages already mapped. ``benchmarks/allocator.py``, both policies side by side (Intel Xeon, 2
cores, the `cpu` preset's shapes): training steps 1.11x as fast, a 160-px feature pass 1.72x, the
kernel's share of their CPU time from 10 s to under 1 s; the one-seed `cpu` study 30 min 32 s instead
of 39 min 38 s, every number the same. The price is peak resident memory (4.06 -> 4.80 GB in the
benchmark's process, 4.42 -> 6.85 GB for that study): blocks freed in the heap are reused but never
shaped to fit exactly (torch asks for 64-byte-aligned blocks), and resident memory stays near its peak
instead of dropping after each batch. Transparent huge pages for torch's blocks
(``THP_MEM_ALLOC_ENABLE=1``) were slower than both (RESULTS.md, "Speed").

Applied once per process by the command line (``longtail.cli.main``); the library does not set it on
import. Where ``mallopt`` does not exist (macOS, Windows, or a C library without it) nothing changes.
Torch-free.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's malloc.h: free memory at the heap's top above this goes back to the kernel
M_MMAP_MAX = -4  # glibc's malloc.h: how many blocks may be served by mmap at once
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes a C int: 2 GiB, more than any pass frees at once


def keep_freed_memory() -> bool:
    """Have glibc serve large blocks from the heap (``M_MMAP_MAX`` 0) and keep freed memory up to
    ``TRIM_THRESHOLD_BYTES`` (``M_TRIM_THRESHOLD``). True when the C library took both settings,
    False where it has no ``mallopt`` or refused one (then allocation stays as it was)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library to load, or one without mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
