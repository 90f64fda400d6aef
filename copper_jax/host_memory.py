"""Host-memory setting a launch script can apply before JAX starts: keep freed memory for reuse (opt-in).

XLA allocates one buffer for all temporaries of an executable (350 MiB for a medium segmentation training step) at
every call. glibc serves so large a block with a fresh mmap and unmaps it when freed, so every step page-faults
all of it in again: 89 000 faults per medium step. `reuse_freed_memory` stops that, but it needs glibc's single
arena, which serialises the allocations of XLA's threads. Which effect wins depends on the program, so it is off
unless COPPER_JAX_REUSE_FREED_MEMORY=1. Measured on a 2-core VM (median step times, 5 repeats of 5 steps):
one medium segmentation model 225 ms with it against 266 ms without (15% faster); the demo's model shape with
18 members unrolled 388-450 ms against 342-361 ms (13-28% slower), and the whole demo sweep (16 members) 2 min
44 s against 2 min 31 s.
"""
import ctypes
import os
import platform
import sys

# Set to 1 to apply `reuse_freed_memory` in every launch script.
ENV_VAR = "COPPER_JAX_REUSE_FREED_MEMORY"
# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))


def reuse_freed_memory() -> bool:
  """Keeps memory that XLA frees in this process's heap (glibc), so the next step reuses it; False elsewhere.

  Without mmap for large blocks, with trimming off (a threshold of 2 GiB still let a K=8 sweep's 2.5 GiB block be
  returned and faulted in again) and with one arena (XLA's worker threads would otherwise get arenas that fall
  back to mmap), a freed block is reused. The process then keeps its peak memory until it exits. Call it before
  JAX starts its threads (before the first computation): threads take their arenas at their first allocation.
  """
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL("libc.so.6")
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)


def reuse_freed_memory_if_asked() -> bool:
  """`reuse_freed_memory()` when the environment sets COPPER_JAX_REUSE_FREED_MEMORY=1; whether it applied."""
  if os.environ.get(ENV_VAR, "0").strip().lower() not in ("1", "true", "yes", "on"):
    return False
  return reuse_freed_memory()
