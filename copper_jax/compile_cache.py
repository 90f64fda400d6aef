"""JAX's persistent compilation cache, on by default for every launch script.

A sweep's training step (the demo's 16 members unrolled in one program) takes tens of seconds to compile on a
small CPU; a rerun, a resume after preemption, `launch/evaluate.py` and `launch/predict.py` build the same programs
again. JAX's own cache keys a compiled executable by the program, the compile options, the backend and the jax
version, so a hit is the same executable, never a stale one. The cache is a folder of files; deleting it only
costs the next run its compilation.

Where: $COPPER_JAX_COMPILE_CACHE if set ("off" turns the cache off), else JAX's own $JAX_COMPILATION_CACHE_DIR if
set, else $XDG_CACHE_HOME/copper_jax/xla (~/.cache/copper_jax/xla).
"""
import os
import warnings

ENV_VAR = "COPPER_JAX_COMPILE_CACHE"
OFF = ("off", "0", "false", "no")
# Programs faster to compile than this are not written: they are many and small (evaluation's helpers), and a
# cache read costs about as much as compiling them.
MIN_COMPILE_S = 1.0


def default_directory() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "copper_jax", "xla")


def directory_from_environment() -> str | None:
  """The cache folder the environment asks for, or None when it turns the cache off."""
  chosen = os.environ.get(ENV_VAR)
  if chosen is not None:
    return None if chosen.strip().lower() in OFF else os.path.abspath(os.path.expanduser(chosen))
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_directory()


def enable(directory: str | None) -> str | None:
  """Points JAX's persistent compilation cache at `directory` (None: leaves it off); returns the folder used.

  Call it before the first compilation; a folder that cannot be created leaves the cache off rather than failing a
  run that would otherwise work.
  """
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    warnings.warn(f"compilation cache off: cannot create {directory} ({e.strerror}); set {ENV_VAR} to a writable "
                  "folder, or to off", stacklevel=2)
    return None
  import jax  # here, not at import time: the launchers import this module before JAX may start
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
  return directory
