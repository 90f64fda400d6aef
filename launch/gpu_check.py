"""The GPU measurements in one run of a few minutes, one JSON: bf16 MFU at the paper's shapes, the paper sweep's
step time and projected full run, members strategies at K = 4, 16, 64, and XLA's deterministic GPU ops.

  python launch/gpu_check.py --out=gpu_check.json               # on a GPU, within --budget_s (default 420 s)
  python launch/gpu_check.py --out=/tmp/gpu_check.json --tiny   # toy sizes: checks the script runs, on any CPU

What each section measures: benchmarks/gpu_run.py. Exits with status 1 when a check fails (members against
separate runs, the two deterministic runs' bytes) or a section raised.
"""
import os
import sys

from absl import flags

# The measurement code lives beside the library, in the repository's benchmarks/ folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from copper_jax import cli  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "JSON file to write the results to (rewritten after each section).",
                           required=True)
_TINY = flags.DEFINE_bool("tiny", False, "Toy sizes: checks that every section runs, not speed.")
_BUDGET = flags.DEFINE_float("budget_s", 420.0, "Seconds the sections may take; a section that would not fit in "
                             "what is left is skipped and says so.", lower_bound=0.0)
_SWEEP_STEPS = flags.DEFINE_integer("sweep_steps", 300, "Training steps of the paper sweep.", lower_bound=4)


def main(argv):
  del argv
  from benchmarks import gpu_run
  result = gpu_run.run_gpu_check(_OUT.value, tiny=_TINY.value, budget_s=_BUDGET.value,
                                 sweep_steps=_SWEEP_STEPS.value, log=lambda line: print(line, file=sys.stderr))
  print(f"results: {_OUT.value}")
  if not result["all_checks_passed"]:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
