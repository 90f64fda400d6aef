"""The persistent compilation cache: where it goes, and that a rerun, evaluate and predict compile nothing new."""
import os

import pytest

from copper_jax import compile_cache
from tests.reliability_helpers import HANG_S, Launch

SMOKE = ["--config=configs/sweep.py:smoke"]
RUN_S = HANG_S


def test_the_environment_chooses_the_folder_or_turns_the_cache_off(monkeypatch, tmp_path):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.directory_from_environment() == str(tmp_path / "xdg" / "copper_jax" / "xla")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_own"))
  assert compile_cache.directory_from_environment() == str(tmp_path / "jax_own")
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "ours"))
  assert compile_cache.directory_from_environment() == str(tmp_path / "ours")
  for off in ("off", "0", "OFF"):
    monkeypatch.setenv(compile_cache.ENV_VAR, off)
    assert compile_cache.directory_from_environment() is None
  assert compile_cache.enable(None) is None


def test_a_folder_that_cannot_be_made_leaves_the_cache_off_with_a_warning(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.warns(UserWarning, match="compilation cache off: cannot create"):
    assert compile_cache.enable(str(blocker / "xla")) is None


def _launch(script, args, log_path):
  run = Launch(script, args, str(log_path))
  assert run.wait(RUN_S) == 0, run.output()


def _entries(cache):
  return set(os.listdir(cache))


@pytest.mark.slow
def test_rerun_evaluate_and_predict_reuse_what_the_first_run_compiled(tmp_path, monkeypatch):
  cache = str(tmp_path / "cache")
  monkeypatch.setenv(compile_cache.ENV_VAR, cache)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the smoke programs compile in < 1 s
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  _launch("sweep.py", [*SMOKE, f"--workdir={first}"], tmp_path / "first.log")
  compiled = _entries(cache)
  assert any(name.startswith("jit_") for name in compiled), compiled
  # A cache miss writes a new entry (every compile counts at a minimum of 0 s), so no new entry means every
  # program came from the cache.
  _launch("sweep.py", [*SMOKE, f"--workdir={second}"], tmp_path / "rerun.log")
  assert _entries(cache) == compiled
  # Evaluation restores a checkpoint, which a fresh run never does: the restore's few tiny programs are new (and
  # too quick to compile to be cached at the default threshold), the sweep's programs are not.
  _launch("evaluate.py", [f"--workdir={first}"], tmp_path / "evaluate.log")
  assert not [name for name in _entries(cache) - compiled if name.startswith(("jit_lifted", "jit__lambda"))]
  # Prediction compiles its own whole-image program once; then a second prediction and a second evaluation
  # compile nothing.
  predict = [f"--workdir={first}", f"--images={first}/data/images/0"]
  _launch("predict.py", [*predict, f"--out={tmp_path}/pred1"], tmp_path / "predict1.log")
  before = _entries(cache)
  _launch("predict.py", [*predict, f"--out={tmp_path}/pred2"], tmp_path / "predict2.log")
  _launch("evaluate.py", [f"--workdir={first}"], tmp_path / "evaluate2.log")
  assert _entries(cache) == before, _entries(cache) - before
  with open(os.path.join(first, "sweep.json"), encoding="utf-8") as a, \
       open(os.path.join(second, "sweep.json"), encoding="utf-8") as b:
    assert a.read().replace(first, "W") == b.read().replace(second, "W")
