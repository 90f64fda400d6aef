"""How much device memory a compiled program needs and a device still has, and the one-line error when it does not fit.

XLA's memory analysis of a compiled step is the figure; the device's allocator (or, on XLA's CPU backend, the host's
MemAvailable) the limit.
"""
from typing import Any

from copper_jax.errors import ConfigError


def compiled_bytes(compiled) -> int:
  """Device bytes a compiled XLA program holds while it runs, from its memory analysis.

  Arguments + outputs - aliased (donated) buffers + temporaries; `peak_memory_in_bytes` is not filled in by every
  backend (XLA's CPU backend reports the arguments only).
  """
  stats = compiled.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
             + stats.temp_size_in_bytes)


def available_memory_bytes(device=None) -> int | None:
  """Bytes `device` (default: this process's first device) can still allocate, or None when nothing says.

  An accelerator's allocator reports its limit and use; XLA's CPU backend reports nothing, and then the host's
  available memory (MemAvailable in /proc/meminfo, which counts reclaimable caches; Linux only) is the figure.
  """
  if device is None:
    import jax  # pylint: disable=import-outside-toplevel
    device = jax.local_devices()[0]  # another process's device cannot report its memory
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass  # not Linux: no figure, so no check
  return None


def check_memory(key: str, value: Any, needed_bytes: int, available_bytes: int | None, fix: str) -> None:
  """ConfigError naming `key` when `needed_bytes` exceed `available_bytes` (no check when that is None)."""
  if available_bytes is None or needed_bytes <= available_bytes:
    return
  gib = 2.0 ** 30
  raise ConfigError(f"config.{key}={value!r}: needs about {needed_bytes / gib:.3g} GiB of device memory but "
                    f"{available_bytes / gib:.3g} GiB are available; {fix}")
