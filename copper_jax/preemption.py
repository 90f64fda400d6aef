"""Stopping a training loop cleanly when the machine is about to be taken away.

SLURM, Kubernetes and spot VMs send SIGTERM some seconds before they kill a job; a user presses Ctrl-C (SIGINT).
Either way the loop finishes the step in flight, writes a checkpoint of it and raises `Preempted`; the launchers
print one line and exit with `EXIT_STATUS`, and the same command resumes from that step to the same bytes as an
uninterrupted run.

With several processes (`jax.distributed.initialize()` was called), JAX's own preemption service catches SIGTERM
in each process and agrees on one step at which all of them stop (`multihost_utils.reached_preemption_sync_point`),
so every process saves the same step and none waits forever in a collective. SIGINT keeps its usual meaning there:
a Ctrl-C reaches one process only, and stopping one alone would leave the others blocked.
"""
import contextlib
import signal
import threading

# EX_TEMPFAIL of sysexits.h: "try again later", which is what a preempted run asks for. Not 2 (a user error) and
# not 128+15 (what a kill without a checkpoint looks like), so a job script can tell the three apart and requeue.
EXIT_STATUS = 75


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint of `step`; rerunning the command resumes there."""

  def __init__(self, signal_name: str, step: int, total: int, checkpoint_dir: str):
    self.signal_name, self.step, self.total, self.checkpoint_dir = signal_name, step, total, checkpoint_dir
    super().__init__(f"stopped by {signal_name} after step {step} of {total}; checkpoint saved in {checkpoint_dir}: "
                     "rerun the same command to resume")


def _several_processes() -> bool:
  import jax  # not at import time: the launchers import this module before JAX may start (see copper_jax.cli)
  return jax.distributed.is_initialized() and jax.process_count() > 1


@contextlib.contextmanager
def signals_held():
  """Within the block SIGTERM and SIGINT are recorded, and delivered to their usual handlers when it ends.

  For work that must not be cut halfway by Python unwinding from a signal handler: an orbax save or restore runs
  tensorstore writes whose completion callbacks reach back into orbax's asyncio loop, and a signal raised while the
  loop is being torn down leaves tensorstore printing "Event loop is closed" tracebacks as the process stops.
  Held, the signal acts a moment later, once the checkpoint is whole. With several processes the SIGTERM handler
  is JAX's (in C++, see the module docstring), which a Python handler could replace but never put back: nothing
  is held there.
  """
  signums = (signal.SIGTERM, signal.SIGINT)
  if (threading.current_thread() is not threading.main_thread() or _several_processes()
      or any(signal.getsignal(signum) is None for signum in signums)):
    yield
    return
  caught = []
  previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
              for signum in signums}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    for signum in dict.fromkeys(caught):
      signal.raise_signal(signum)


class StopOnSignal:
  """Within `with StopOnSignal() as stop:` SIGTERM and SIGINT no longer kill the process; `stop.due(step)` says,
  once per step and in every process alike, whether to save and stop after `step`.

  Outside the block (data preparation before it, evaluation after it) the signals act as usual: nothing is
  lost there, since data and results are written atomically and the last checkpoint is complete. A second signal
  inside the block also acts as usual, for a user who does not want to wait for the step in flight.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame  # Unused; part of the signal handler's signature.
    self.signal_name = signal.Signals(signum).name
    self._restore()

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self) -> "StopOnSignal":
    # Python delivers signals to the main thread only; a loop run from another thread keeps the default.
    if threading.current_thread() is not threading.main_thread():
      return self
    # Several processes: JAX's preemption service already handles SIGTERM (in C++); a Python handler would
    # replace it and that process would stop at a step the others never agreed to.
    # SIGINT there reaches one process only, and that one stopping alone would leave the others blocked.
    if _several_processes():
      return self
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  def due(self, step: int) -> bool:
    """Whether the loop should checkpoint and stop after `step` (call it after every step, in every process)."""
    if _several_processes():
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None
