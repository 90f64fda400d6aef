"""Bad configs through the real launcher: one line naming the key, a non-zero exit, nothing written, no compile.

Each case runs `python launch/sweep.py --config=configs/sweep.py:smoke --workdir=W <override>` as a subprocess,
with JAX logging every XLA compilation. The workdir must not exist afterwards (a failed start leaves no trace) and
the log must show no compilation (the failure came before any program was built).
"""
import concurrent.futures
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from copper_jax import config_utils, device_memory
from copper_jax.errors import ConfigError
from tests.reliability_helpers import HANG_S, ROOT, launcher_env

# (override, words the last stderr line must hold). The words name the key, or for a preset the preset.
CASES = [
    ("--config.train.batch_sise=4", ["batch_sise", "batch_size"]),            # misspelt key
    ("--config.trian.batch_size=4", ["trian"]),                               # misspelt section
    ("--config.train.batch_size=abc", ["train.batch_size", "abc"]),           # wrong type
    ("--config.train.batch_size=2.5", ["train.batch_size", "2.5"]),           # float for an int
    ("--config.train.flips=maybe", ["train.flips", "maybe"]),                 # not a bool
    ("--config.train.batch_size=0", ["train.batch_size"]),                    # batch of zero
    ("--config.train.patch_size=4096", ["train.patch_size", "64x64"]),        # patch larger than the images
    ("--config.num_seeds=10000000", ["num_seeds", "GiB"]),                    # more seeds than memory
    ("--config.num_seeds=0", ["num_seeds"]),
    ("--config.train.num_steps=0", ["train.num_steps", "train.num_epochs"]),  # no duration at all
    ("--config.train.checkpoint_every=-1", ["train.checkpoint_every"]),
    ("--config.optim.learning_rate=-0.1", ["optim.learning_rate"]),
    ("--config.loss.kind=l1", ["loss.kind"]),
    ("--config.members.strategy=pmap", ["members.strategy"]),
    ("--config.hypotheses=('linear','cubic')", ["cubic"]),
    ("--config.data.root=/nonexistent/sem", ["/nonexistent/sem", "data.root"]),
    ("--config=configs/sweep.py:bogus", ["bogus"]),                           # unknown preset
]
# Importing JAX and parsing the flags takes about 3 s on 2 busy cores; the limit only tells a hang from that.
LIMIT_S = HANG_S


def _run(override, work_dir):
  """The finished launcher process, or the TimeoutExpired of one that did not end (a hang is a failure too)."""
  config = [] if override.startswith("--config=") else ["--config=configs/sweep.py:smoke"]
  try:
    return subprocess.run([sys.executable, "launch/sweep.py", *config, f"--workdir={work_dir}", override],
                          cwd=ROOT, env=dict(launcher_env(), JAX_LOG_COMPILES="1"), capture_output=True, text=True,
                          timeout=LIMIT_S)
  except subprocess.TimeoutExpired as e:
    return e


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """{override: (CompletedProcess, workdir)} for every case, run a few at a time."""
  base = tmp_path_factory.mktemp("config_errors")
  work_dirs = {override: str(base / f"w{i}") for i, (override, _) in enumerate(CASES)}
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {override: pool.submit(_run, override, work_dirs[override]) for override in work_dirs}
    return {override: (future.result(), work_dirs[override]) for override, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("override, words", CASES, ids=[case[0].split("--config")[-1] for case in CASES])
def test_bad_config_fails_in_one_line_naming_the_key_and_writes_nothing(outcomes, override, words):
  result, work_dir = outcomes[override]
  assert not isinstance(result, subprocess.TimeoutExpired), f"still running after {LIMIT_S} s"
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("error: "), result.stderr
  for word in words:
    assert word in lines[-1], f"{word!r} not in the last line: {lines[-1]!r}"
  assert "Traceback" not in result.stderr, result.stderr
  assert "XLA compilation" not in result.stderr, result.stderr
  assert not os.path.exists(work_dir), os.listdir(work_dir)


def test_memory_check_names_the_key_and_the_figures():
  device_memory.check_memory("num_seeds", 3, needed_bytes=2 ** 30, available_bytes=2 ** 31, fix="unused")
  device_memory.check_memory("num_seeds", 3, needed_bytes=2 ** 40, available_bytes=None, fix="unused")  # unknown
  with pytest.raises(ConfigError, match=r"config.num_seeds=3: needs about 4 GiB .* but 2 GiB are available; "
                                        r"lower num_seeds"):
    device_memory.check_memory("num_seeds", 3, needed_bytes=2 ** 32, available_bytes=2 ** 31, fix="lower num_seeds")


def test_memory_figures_come_from_the_device_and_xla():
  available = device_memory.available_memory_bytes()
  assert available is None or available > 0
  # x * 2 on 1000 float32 values: 4000 bytes in, 4000 bytes out, nothing donated.
  compiled = jax.jit(lambda x: x * 2).lower(jax.ShapeDtypeStruct((1000,), jnp.float32)).compile()
  assert device_memory.compiled_bytes(compiled) >= 8000


@pytest.mark.parametrize("name, table", [("sweep", "SWEEP"), ("classifier", "CLASSIFIER"), ("grid_search", "GRID")])
def test_every_key_of_every_preset_has_a_validation_rule(name, table):
  """A key added to a config without a rule would pass unchecked; the grid's value lists are checked when expanded
  (`grid_search.grid_points`)."""
  import importlib
  from copper_jax import config_rules
  module = importlib.import_module(f"configs.{name}")
  rules = getattr(config_rules, table)
  for preset in module.PRESETS:
    keys = config_utils.flatten(module.get_config(preset))
    unruled = [k for k in keys if k not in rules and not any(k.startswith(r + ".") for r in rules)
               and not (k.startswith("grid.") and k != "grid.budget_mb")]
    assert unruled == [], (preset, unruled)
