"""The launchers' host-memory choice: freed blocks are reused instead of being page-faulted in again where the
launcher asks for it, and COPPER_JAX_REUSE_FREED_MEMORY overrides the launcher either way."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from copper_jax import host_memory
from tests.reliability_helpers import HANG_S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A launch script in miniature: cli.run (with the launcher default given as argv[1]) around a main that
# allocates, touches and frees a 64 MiB block 12 times, as XLA does with a step's temporaries, and reports the
# minor page faults of the last 10.
_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from copper_jax import cli

    def main(argv):
      def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for i in range(12):
        if i == 2:
          start = faults()
        block = np.ones(16 * 2 ** 20, np.float32)
        del block
      print(json.dumps({"faults_per_block": (faults() - start) / 10}))

    cli.run(main, reuse_freed_memory=sys.argv.pop(1) == "reuse")
""")


def _launch(launcher_default: str, setting: str | None):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(host_memory.ENV_VAR, None)
  if setting is not None:
    env[host_memory.ENV_VAR] = setting
  return subprocess.run([sys.executable, "-c", _SCRIPT, launcher_default], env=env, capture_output=True, text=True,
                        timeout=HANG_S)


def _faults_per_block(launcher_default: str, setting: str | None) -> float:
  run = _launch(launcher_default, setting)
  assert run.returncode == 0, run.stderr
  return json.loads(run.stdout.strip().splitlines()[-1])["faults_per_block"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's")
def test_the_launcher_chooses_and_the_environment_overrides():
  default = _faults_per_block("plain", None)
  # glibc's default maps a block this large afresh each time, so its pages fault in again (544 faults per block
  # here with 4 KiB pages and fault-around); reused, the block is already mapped.
  assert default >= 16, default
  assert _faults_per_block("reuse", None) * 20 <= default
  assert _faults_per_block("plain", "1") * 20 <= default
  assert _faults_per_block("reuse", "0") * 2 >= default


def test_a_bad_value_is_one_line_naming_the_variable():
  run = _launch("reuse", "yes please")
  assert run.returncode == 2
  assert run.stderr.strip().splitlines() == [
      "error: COPPER_JAX_REUSE_FREED_MEMORY='yes please': set it to 1 (reuse freed memory) or 0 (glibc's default), "
      "or unset it for the launcher's choice"]
