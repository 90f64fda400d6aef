"""Workdir files: atomic writes under failure, the workdir lock across processes, config.json."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from copper_jax.store import workdir
from copper_jax.errors import UserError


def _disk_full(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
def test_failed_atomic_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, fail_in):
  path = tmp_path / "metrics.json"
  workdir.atomic_write_json(str(path), {"old": 1})
  if fail_in == "write":
    real_write = os.write

    def half_then_full(fd, data):  # Writes part of the data, as a filling disk does, then fails.
      if len(data) > 4:
        real_write(fd, bytes(data[:4]))
      raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workdir.os, "write", half_then_full)
  else:
    monkeypatch.setattr(workdir.os, fail_in, _disk_full)
  with pytest.raises(OSError, match="No space left"):
    workdir.atomic_write_json(str(path), {"new": "x" * 1000})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"old": 1}
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_writes_replace_content_and_keep_mode(tmp_path):
  path = tmp_path / "f.txt"
  workdir.atomic_write_text(str(path), "a")
  assert path.stat().st_mode & 0o777 == 0o644
  os.chmod(path, 0o600)
  workdir.atomic_write_bytes(str(path), b"\x00\xffb")
  assert path.read_bytes() == b"\x00\xffb" and path.stat().st_mode & 0o777 == 0o600
  workdir.atomic_write_json(str(path), {"b": [1, 2], "a": None})
  assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}
  assert os.listdir(tmp_path) == ["f.txt"]


_HOLDER = textwrap.dedent("""
    import sys
    from copper_jax.store.workdir import WorkdirLock
    with WorkdirLock(sys.argv[1]):
      print("locked", flush=True)
      sys.stdin.readline()
""")


def _start_holder(path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, cwd=repo)
  assert child.stdout.readline().strip() == "locked"
  return child


def test_workdir_lock_refuses_a_second_process_until_it_exits(tmp_path):
  child = _start_holder(tmp_path)
  try:
    with pytest.raises(UserError) as info:
      with workdir.WorkdirLock(str(tmp_path)):
        pass
    assert str(info.value) == (f"workdir {tmp_path} is in use by another copper_jax process (pid {child.pid}); "
                               "wait for it or choose another --workdir")
  finally:
    child.communicate("done\n")  # Releases the lock by leaving the with block.
  with workdir.WorkdirLock(str(tmp_path)) as lock:
    assert open(lock.path).read().strip() == str(os.getpid())


def test_workdir_lock_is_released_when_the_holder_is_killed(tmp_path):
  child = _start_holder(tmp_path)
  child.kill()
  child.wait()
  with workdir.WorkdirLock(str(tmp_path)):
    pass


def test_workdir_lock_excludes_within_one_process_and_releases_on_exit(tmp_path):
  with workdir.WorkdirLock(str(tmp_path / "new")):  # Creates the workdir.
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
      workdir.WorkdirLock(str(tmp_path / "new")).__enter__()
  with workdir.WorkdirLock(str(tmp_path / "new")):
    pass


def _config(**model):
  return ml_collections.ConfigDict({"model": {"c": 8, **model}, "hypotheses": ("a", "b"),
                                    "train": {"num_steps": 10}})


def test_save_config_writes_once_and_returns_saved_when_keys_that_matter_differ(tmp_path):
  assert workdir.save_config(str(tmp_path), _config()) is None
  assert workdir.load_config(str(tmp_path)) == ml_collections.ConfigDict(
      {"model": {"c": 8}, "hypotheses": ["a", "b"], "train": {"num_steps": 10}})
  assert workdir.save_config(str(tmp_path), _config()) is None  # Same config (tuple vs list): nothing to do.

  saved = workdir.save_config(str(tmp_path), _config(c=16), keys=["model.c"])
  assert saved.model.c == 8 and workdir.load_config(str(tmp_path)).model.c == 8  # Left untouched.
  assert workdir.save_config(str(tmp_path), _config(c=16)).model.c == 8  # All keys matter by default.

  longer = _config()
  longer.train.num_steps = 20
  assert workdir.save_config(str(tmp_path), longer, keys=["model.c", "hypotheses"]) is None
  assert workdir.load_config(str(tmp_path)).train.num_steps == 20  # Describes the latest run.


def test_load_config_errors_name_the_workdir(tmp_path):
  with pytest.raises(UserError, match=f"no config.json in {tmp_path}: is it a copper_jax workdir"):
    workdir.load_config(str(tmp_path))
  (tmp_path / "config.json").write_text("{\"model\": ")
  with pytest.raises(UserError, match="config.json is not valid JSON"):
    workdir.load_config(str(tmp_path))


def test_without_posix_file_locks_the_lock_says_so_in_one_line(tmp_path, monkeypatch):
  import sys
  from copper_jax.errors import UserError
  from copper_jax.store.workdir import WorkdirLock
  monkeypatch.setitem(sys.modules, "fcntl", None)  # what importing it gives on Windows: ImportError
  with pytest.raises(UserError, match="needs POSIX file locks.*WSL2"):
    with WorkdirLock(str(tmp_path)):
      pass
