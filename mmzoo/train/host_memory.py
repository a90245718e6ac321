"""Host memory policy: reuse freed memory instead of page-faulting it in again.

Each call of a jitted CPU computation allocates its large buffers anew (one
LSTM layer's forward + backward in `benchmarks/rnn_layer.py`: about 40 MB).
glibc's malloc serves blocks that large with `mmap` (or from per-thread heaps
that it unmaps once they empty) and hands them back to the kernel when they are
freed; the next call gets fresh pages, and touching each one is a page fault. Here
that is about 10,000 minor faults per call of that layer and 7-18% of a
training step of the default char model (benchmarks/RESULTS.md).

`retain_freed_memory` turns that off for the process: large blocks come from
the main heap, and freed memory stays there for the next step (up to 2 GiB of
free memory at the heap's top is kept rather than returned). The process holds
on to what it has used rather than shrinking between steps, which is what a
training job wants; its peak was no higher (the default char model, 600 steps:
819 MB resident against 900 MB).
PyTorch gains as much from it, so benchmarks apply it to both frameworks.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_AT_TOP = 2**31 - 1  # Bytes of free heap top kept rather than returned (mallopt's int).


def retain_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse (no mmap'd blocks, no trimming).

  Returns True when it was applied; False, changing nothing, where the C
  library is not glibc (macOS, musl).
  """
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(None)  # The symbols already loaded into the process: glibc's among them.
  # mallopt returns 1 on success.
  return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                   _KEEP_AT_TOP))
