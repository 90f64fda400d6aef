"""The launchers' opt-in host-memory setting: freed blocks are reused instead of being page-faulted in again."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from copper_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A launch script in miniature: cli.run around a main that allocates, touches and frees a 64 MiB block 12 times
# (as XLA does with a step's temporaries) and reports the minor page faults of the last 10.
_SCRIPT = textwrap.dedent("""
    import json, resource
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

    cli.run(main)
""")


def _faults_per_block(setting: str | None) -> float:
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(host_memory.ENV_VAR, None)
  if setting is not None:
    env[host_memory.ENV_VAR] = setting
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True,
                       timeout=120)
  return json.loads(out.stdout.strip().splitlines()[-1])["faults_per_block"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's")
def test_launchers_reuse_freed_memory_when_the_environment_asks():
  default = _faults_per_block(None)
  reused = _faults_per_block("1")
  # glibc's default maps a block this large afresh each time, so its pages fault in again (544 faults per block
  # here with 4 KiB pages and fault-around); reused, the block is already mapped.
  assert default >= 16, default
  assert reused * 20 <= default, (reused, default)


def test_other_values_leave_glibc_alone(monkeypatch):
  for value in ("0", "false", "OFF", " no ", "2"):
    monkeypatch.setenv(host_memory.ENV_VAR, value)
    assert host_memory.reuse_freed_memory_if_asked() is False
