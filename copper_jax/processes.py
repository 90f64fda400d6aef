"""Several processes (hosts) running one sweep: who writes files, how arrays reach the host, where they wait.

After `jax.distributed.initialize()` every process runs the same program on its own devices, and the members
axis is split over all of them (`members.members_mesh`). Each process trains its own members; the checkpoint
(orbax) is written by all of them together; every other file of the workdir (metrics, results, figures, the
synthetic data) is written by the first process alone, so the workdir is the one a single process would leave.
With one process every function here is what the single-process code did before. JAX is imported where it is
used, so the modules that import this one (the workdir lock, the metric writer) still import without it.
"""
import numpy as np


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = 100) -> None:
  """Joins this process to a job of several (`jax.distributed.initialize`), before anything runs on a device.

  Without arguments JAX reads them from the cluster's environment (SLURM, Open MPI, Kubernetes, Cloud TPU). On CPU
  the processes exchange arrays through gloo, which JAX ships. Also turns on JAX's preemption service, through
  which a SIGTERM to any process stops all of them at one agreed step (`copper_jax.preemption`). A process that
  dies without a word (SIGKILL, a lost host) leaves the others waiting in their next collective until
  `heartbeat_timeout_s` (JAX's default, 100 s) has passed without its heartbeat; they then abort, and the job is
  restarted from the last checkpoint.
  """
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_preemption_service", True)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_s)


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


def barrier(name: str) -> None:
  """Every process waits here until all have arrived; nothing with one process."""
  import jax
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
