"""Host-memory setting a launch script applies before JAX starts: keep freed memory for reuse.

XLA allocates one buffer for all temporaries of an executable (350 MiB for a medium segmentation training step) at
every call. glibc serves so large a block with a fresh mmap and unmaps it when freed, so every step page-faults
all of it in again: 89 000 faults per medium step. `reuse_freed_memory` stops that, but it needs glibc's single
arena, which serialises the allocations of XLA's threads. Which effect wins depends on the program, so each
launcher says whether it applies it (see `cli.run`) and COPPER_JAX_REUSE_FREED_MEMORY=1 or 0 overrides that.
Measured, it speeds up programs of one model (launch/train.py, launch/grid_search.py and launch/predict.py apply
it) and slows down many members unrolled in one program, whose threads then queue on the one arena
(launch/sweep.py does not). The figures are in docs/performance.md, "Freed-memory reuse".
"""
import ctypes
import os
import platform
import sys

# 1 or 0: apply `reuse_freed_memory` in every launch script, or in none, whatever the launcher's default.
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


def apply(default: bool) -> bool:
  """`reuse_freed_memory()` if COPPER_JAX_REUSE_FREED_MEMORY says 1, or says nothing and `default` is True;
  whether it applied. Any other value of the variable is an error a user should hear about, not a silent default.
  """
  value = os.environ.get(ENV_VAR, "").strip().lower()
  if value not in ("", "0", "1"):
    raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: set it to 1 (reuse freed memory) or 0 (glibc's "
                     f"default), or unset it for the launcher's choice")
  if value == "0" or (value == "" and not default):
    return False
  return reuse_freed_memory()
