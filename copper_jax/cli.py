"""The shell every launch script runs in: absl's app.run, with user errors reported as one line.

Flags are defined in the launch scripts; this turns a `UserError`, a flag or config-override mistake, or a
missing config file into one line on stderr and exit status 2, so a user sees what is wrong and how to fix it,
not a traceback. A training run stopped by SIGTERM or SIGINT after saving its checkpoint (`preemption`) prints its
one line and exits with `preemption.EXIT_STATUS`; stopped by either signal anywhere else (data preparation,
compilation, evaluation, a second signal during training) it prints one line and exits with 128 + the signal's
number, since every file is replaced whole and the last checkpoint is complete. It turns on JAX's persistent
compilation cache (`compile_cache`) and applies the launcher's host-memory choice before JAX starts (see
`host_memory`: keeping freed memory for reuse speeds up one-model programs and slows down many-member sweeps).
"""
import errno
import os
import re
import signal
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from copper_jax import compile_cache, host_memory, preemption
from copper_jax.errors import UserError


def _last_message(text: str) -> str:
  """The line of a (possibly traceback-laden) error text that says what went wrong."""
  lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("Pass --")]
  for line in reversed(lines):
    match = re.match(r"^(?:FATAL Flags parsing error: )?(?:[A-Za-z_.]*(?:Error|Exception)): (.+)$", line)
    if match:
      return match.group(1)
  return lines[-1] if lines else text


def flag_error_line(error: Exception) -> str:
  """One line for an error met while parsing flags and applying `--config.KEY=VALUE` overrides."""
  text = str(error).encode().decode("unicode_escape") if "\\n" in str(error) else str(error)
  if isinstance(error, (AttributeError, KeyError)):
    key = re.search(r"'([^']+)'", text)
    hint = re.search(r"Did you mean \"([^\"]+)\"", text)
    name = key.group(1) if key else text.splitlines()[0]
    return (f"unknown config key {name!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")
            + " (see the config file for the valid keys)")
  return _last_message(text)


def _raised_in_ml_collections(error: Exception) -> bool:
  tb = error.__traceback__
  while tb is not None:
    if "ml_collections" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 -- every parse failure is the user's to fix, so one line each
    print(f"error: {flag_error_line(e)}", file=sys.stderr)
    sys.exit(2)


def define_config(default: str, help_text: str):
  """The locked `--config` flag of a launch script (misspelt override keys fail), with one-line errors.

  config_flags applies `--config.KEY=VALUE` overrides as soon as the flag is defined, so a misspelt key fails
  here, at import, before `run` could catch it.
  """
  try:
    return config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
  except (AttributeError, KeyError) as e:
    if not _raised_in_ml_collections(e):
      raise
    print(f"error: {flag_error_line(e)}", file=sys.stderr)
    sys.exit(2)


class Stopped(BaseException):
  """SIGTERM outside a training loop's own handling (which saves a checkpoint first); like KeyboardInterrupt."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _stop(signum, frame):
  del frame  # part of a signal handler's signature
  raise Stopped(signum)


def _stopped_line(name: str) -> str:
  return (f"stopped by {name}; what was written before is intact (files are replaced whole, checkpoints only "
          f"once complete): rerun the same command to resume")


def _exit_stopped(name: str, signum: int) -> None:
  """One line, then exit at once, as a kill would: an interrupted checkpoint save is still writing in orbax's
  threads, which would print their tracebacks during a normal interpreter exit. What they leave is a temporary
  folder that the next run removes; completed steps and results are untouched."""
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)  # a further signal while the line is printed changes nothing
  print(_stopped_line(name), file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(128 + signum)  # pylint: disable=protected-access


def run(main, reuse_freed_memory: bool = False) -> None:
  """Runs `main` under absl with one-line user errors; `reuse_freed_memory`: the launcher's default for
  `host_memory.apply` (COPPER_JAX_REUSE_FREED_MEMORY overrides it)."""
  # Before any computation: XLA's threads take their allocator arenas at their first allocation.
  try:
    host_memory.apply(reuse_freed_memory)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # Reruns, resumes, evaluate and predict then load the programs an earlier run compiled.
  compile_cache.enable(compile_cache.directory_from_environment())
  if threading.current_thread() is threading.main_thread():
    # A training loop replaces this while it runs (`preemption`) and puts it back after.
    signal.signal(signal.SIGTERM, _stop)
  def guarded(argv):
    # orbax logs every checkpoint step at INFO; users want the progress bar and errors.
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except preemption.Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(preemption.EXIT_STATUS)
    except KeyboardInterrupt:
      _exit_stopped("SIGINT", signal.SIGINT)
    except Stopped as e:
      _exit_stopped(str(e), e.signum)
    except (AttributeError, KeyError) as e:
      # config_flags applies `--config.KEY=VALUE` overrides lazily, on first access to the config.
      if not _raised_in_ml_collections(e):
        raise
      print(f"error: {flag_error_line(e)}", file=sys.stderr)
      sys.exit(2)
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        # Results and checkpoints are replaced atomically, so the previous ones are intact.
        print(f"error: disk full writing {e.filename or 'a file'} ({e.strerror}); free space and rerun the same "
              "command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(2)
      if "Failed loading config file" not in str(e):
        raise
      missing = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)", str(e))
      where = missing.group(1) if missing else "the --config file"
      print(f"error: cannot load config file {where}; pass --config=configs/NAME.py:PRESET from the repository "
            f"root", file=sys.stderr)
      sys.exit(2)
  app.run(guarded, flags_parser=_parse_flags)
