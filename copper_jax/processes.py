"""Several processes (hosts) running one sweep: who writes files, how arrays reach the host, where they wait.

After `jax.distributed.initialize()` every process runs the same program on its own devices, and the members
axis is split over all of them (`members.members_mesh`). Each process trains its own members; the checkpoint
(orbax) is written by all of them together; every other file of the workdir (metrics, results, figures, the
synthetic data) is written by the first process alone, so the workdir is the one a single process would leave.
With one process every function here is what the single-process code did before. JAX is imported where it is
used, so the modules that import this one (the workdir lock, the metric writer) still import without it.
"""
import os
import re
import sys
import threading

import numpy as np

from copper_jax.errors import UserError

DEFAULT_JOIN_TIMEOUT_S = 300
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})")
_JOB_FLAGS = "--coordinator_address, --num_processes and --process_id"


def cluster_environment() -> str | None:
  """The name of the cluster environment JAX would read the job from (SLURM, Open MPI, ...), or None."""
  try:
    from jax._src import clusters  # JAX's own detection, so we agree with what initialize() would find
    for cluster in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
      if cluster.is_env_present():
        return cluster.__name__
  except Exception:  # pylint: disable=broad-except -- a private API: without it, only the flags count
    pass
  return None


def check_job(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """UserError (one line naming the flag) unless the flags describe a job JAX can join: a coordinator at HOST:PORT
  with the number of processes and 0 <= process_id < num_processes, or a cluster environment that provides them."""
  environment = cluster_environment()
  if coordinator_address is None and environment is None:
    raise UserError("--distributed needs --coordinator_address=HOST:PORT (of process 0), --num_processes and "
                    "--process_id, unless a cluster environment (SLURM, Open MPI, Kubernetes, Cloud TPU) provides "
                    "them; none was found")
  if coordinator_address is not None:
    match = _ADDRESS.fullmatch(coordinator_address.strip())
    if not match or not 1 <= int(match.group(3)) <= 65535:
      raise UserError(f"--coordinator_address={coordinator_address!r}: give HOST:PORT of process 0 with a port "
                      f"in 1..65535, e.g. --coordinator_address=10.0.0.1:1234")
    if environment is None and (num_processes is None or process_id is None):
      raise UserError("--coordinator_address needs --num_processes and --process_id too (no cluster environment "
                      "provides them)")
  if num_processes is not None and num_processes < 1:
    raise UserError(f"--num_processes={num_processes}: a job has at least 1 process")
  if process_id is not None and (num_processes is None or not 0 <= process_id < num_processes):
    raise UserError(f"--process_id={process_id}: must satisfy 0 <= process_id < --num_processes"
                    f"{'' if num_processes is None else f'={num_processes}'}")


def join_from_flags(distributed: bool, coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None, heartbeat_timeout_s: int = 100,
                    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S) -> None:
  """A launcher's --distributed flags: `initialize` with them, checked first; without --distributed the job flags
  are refused rather than ignored."""
  if not distributed:
    if any(v is not None for v in (coordinator_address, num_processes, process_id)):
      raise UserError(f"{_JOB_FLAGS} only apply with --distributed; add --distributed or drop them")
    return
  initialize(coordinator_address, num_processes, process_id, heartbeat_timeout_s, join_timeout_s)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = 100,
               join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S) -> None:
  """Joins this process to a job of several (`jax.distributed.initialize`), before anything runs on a device.

  Without arguments JAX reads them from the cluster's environment (SLURM, Open MPI, Kubernetes, Cloud TPU). On CPU
  the processes exchange arrays through gloo, which JAX ships. Also turns on JAX's preemption service, through
  which a SIGTERM to any process stops all of them at one agreed step (`copper_jax.preemption`). A process that
  dies without a word (SIGKILL, a lost host) leaves the others waiting in their next collective until
  `heartbeat_timeout_s` (JAX's default, 100 s) has passed without its heartbeat; they then abort, and the job is
  restarted from the last checkpoint.

  The flags are checked first (`check_job`). Joining says what it waits for, and a partner that has not joined
  after `join_timeout_s` ends this process with one line and exit status 2: JAX's own deadline aborts the process
  with a native stack trace, so ours comes first.
  """
  check_job(coordinator_address, num_processes, process_id)
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_preemption_service", True)
  who = (f"process {process_id} of {num_processes}" if process_id is not None and num_processes is not None
         else "this process")
  where = f"the coordinator {coordinator_address}" if coordinator_address else "the cluster's coordinator"
  print(f"{who}: waiting up to {join_timeout_s} s for every process of the job to join at {where}",
        file=sys.stderr, flush=True)
  joined = threading.Event()

  def give_up():
    if not joined.wait(join_timeout_s):
      print(f"error: {who} gave up after {join_timeout_s} s: not every process joined at {where}; start the same "
            f"command with --distributed in each process (process 0 at that address), or raise --join_timeout_s",
            file=sys.stderr, flush=True)
      os._exit(2)  # JAX's connect call cannot be interrupted from Python

  threading.Thread(target=give_up, name="join-timeout", daemon=True).start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_s,
                               initialization_timeout=join_timeout_s + 60)
  except (ValueError, RuntimeError) as e:
    raise UserError(f"--distributed: could not join the job ({str(e).splitlines()[0] if str(e) else e}); check "
                    f"{_JOB_FLAGS}") from None
  finally:
    joined.set()


def is_primary() -> bool:
  """Whether this process writes the workdir's files (always, with one process)."""
  import jax
  # Asked before anything runs on a device too (the workdir lock): without a job of several processes, starting
  # JAX's backends here would fix XLA's flags before the launcher sets them.
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def to_host(tree):
  """`jax.device_get` of a pytree, gathering arrays spread over several processes' devices (a collective: every
  process must call it at the same point)."""
  import jax
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)
  return jax.tree_util.tree_map(one, tree)


# How long a process waits at a barrier for the slowest of the others (one generating the synthetic set on a busy
# machine); a dead partner ends the wait sooner, through the heartbeat.
BARRIER_TIMEOUT_S = 3600


def barrier(name: str) -> None:
  """Every process waits here until all have arrived; nothing with one process.

  Through the coordination service (orbax's barrier), not a collective: XLA's CPU collectives give up after 30 s,
  which a partner still loading or compiling on a loaded machine can miss."""
  import jax
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    from orbax.checkpoint import multihost
    multihost.get_barrier_sync_fn()(key=name, timeout_ms=BARRIER_TIMEOUT_S * 1000)
