"""Measures training, sweep, prediction and input-pipeline speed on this machine; writes JSON and a table.

  python launch/benchmark.py --preset=cpu --out=/tmp/bench_cpu.json
  python launch/benchmark.py --preset=cpu --out=/tmp/bench_cpu.json \
      --torch_python=/path/to/venv-with-torch/bin/python  # with PyTorch, interleaved
  python launch/benchmark.py --preset=gpu --out=/tmp/bench_gpu.json
  python launch/benchmark.py --preset=cpu --out=/tmp/bench_quick.json --quick  # tiny shapes, seconds

With --torch_python, an interpreter that has torch and numpy (a venv of its own: the project does not depend on
torch) runs benchmarks/torch_worker.py, whose PyTorch twins of our nets (benchmarks/torch_nets.py) train and
predict interleaved with JAX.

Exits with status 1 when a fast path's results differ from the plain one's, or a PyTorch twin's parameter count
from ours (see `checks` in the JSON).
"""
import json
import os
import sys

from absl import app, flags

# The measurement code lives beside the library, in the repository's benchmarks/ folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import benchmark  # noqa: E402
from copper_jax import host_memory  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "cpu", list(benchmark.PRESETS), "Shapes and sizes to measure.")
_OUT = flags.DEFINE_string("out", None, "JSON file to write the results to.", required=True)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny shapes and 2 repeats: checks that everything runs, not speed.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "Python with torch and numpy installed, to run the "
                                    "PyTorch twins of our nets (benchmarks/torch_nets.py) interleaved with JAX.")
_REUSE = flags.DEFINE_bool("reuse_freed_memory", True, "Keep freed memory for reuse instead of page-faulting "
                           "XLA's temporaries in at every step.")
_TORCH_REUSE = flags.DEFINE_bool("torch_reuse_freed_memory", None, "The same for the PyTorch worker (default: as "
                                 "--reuse_freed_memory).")
_SECTIONS = flags.DEFINE_list("sections", list(benchmark.SECTIONS), "Sections to run.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # before JAX starts its threads: they take their allocator arenas at their first allocation
  reused = host_memory.reuse_freed_memory() if _REUSE.value else False
  result = benchmark.run_benchmark(_PRESET.value, quick=_QUICK.value, torch_python=_TORCH_PYTHON.value,
                                   reused_freed_memory=reused,
                                   torch_reuses_freed_memory=_TORCH_REUSE.value, sections=_SECTIONS.value,
                                   log=lambda line: print(line, file=sys.stderr))
  with open(_OUT.value, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print(benchmark.table(result))
  print(f"results: {_OUT.value}")
  if not result["all_checks_passed"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
