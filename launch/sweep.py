"""The main job: a hypothesis sweep, ending in `WORKDIR/report.html`.

  python launch/sweep.py --config=configs/sweep.py:demo --workdir=runs/demo [--config.data.root=DIR]

Restarting the same command resumes from the last checkpoint. Several processes (hosts) of one sweep: the same
command in each, plus --distributed (README, "Several hosts").
"""
from absl import flags

from copper_jax import cli

_CONFIG = cli.define_config("configs/sweep.py:demo", "Sweep config file and preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, results and the report.", required=True)
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors and the final line.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "One of several processes (hosts) of one sweep: joins them "
                                 "with jax.distributed, from the flags below or, without them, from the cluster's "
                                 "environment (SLURM and others). Start the same command in every process.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, with --distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job, with --distributed.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (0 writes the files), with "
                                   "--distributed.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100, "With --distributed: seconds without a heartbeat "
                                  "after which a process counts as dead and the others abort.", lower_bound=1)
_JOIN_TIMEOUT = flags.DEFINE_integer("join_timeout_s", 300, "With --distributed: seconds to wait for every process "
                                     "to join before giving up with one line.", lower_bound=1)


def main(argv):
  del argv
  from copper_jax import determinism
  # Before anything runs on a device: XLA reads its flags once, when JAX starts its backends.
  determinism.configure(_CONFIG.value.deterministic)
  from copper_jax import processes
  processes.join_from_flags(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                            _HEARTBEAT.value, _JOIN_TIMEOUT.value)
  if _CONFIG.value.model.search.enabled:
    from copper_jax import model_search
    model_search.search_then_sweep(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  else:
    from copper_jax.sweep import run
    run.run_sweep(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  print(f"report: {_WORKDIR.value}/report.html")


if __name__ == "__main__":
  cli.run(main)
