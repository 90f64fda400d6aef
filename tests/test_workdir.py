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


# Ownership: a folder copper_jax did not make is never written into.


def _user_project(folder):
  """A folder of a user's own files with the names a run would write."""
  (folder / "tables").mkdir(parents=True)
  for name, text in {"config.json": '{"mine": 1}', "report.html": "<p>mine</p>", "tables/ranking.csv": "a,b\n"}.items():
    (folder / name).write_text(text)
  return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", workdir.KINDS)
def test_a_folder_of_someone_elses_files_is_refused_for_every_kind_and_left_as_it_was(tmp_path, kind):
  before = _user_project(tmp_path / "project")
  with pytest.raises(UserError, match="already holds files copper_jax did not write.*name a new folder"):
    workdir.claim(str(tmp_path / "project"), kind, "--out")
  with pytest.raises(UserError, match="did not write"):
    with workdir.locked_start(str(tmp_path / "project"), workdir.SWEEP):
      raise AssertionError("the start went ahead")
  assert {p: p.read_bytes() for p in (tmp_path / "project").rglob("*") if p.is_file()} == before


def test_a_new_or_empty_folder_is_marked_with_its_kind_and_stays_ours(tmp_path):
  for name in ("new", "empty"):
    if name == "empty":
      (tmp_path / name).mkdir()
    path = workdir.claim(str(tmp_path / name), workdir.CLASSIFIER, "--workdir")
    assert workdir.read_mark(path)["kind"] == workdir.CLASSIFIER == workdir.kind_of(path)
    (tmp_path / name / "results.json").write_text("{}")
    assert workdir.claim(path, workdir.CLASSIFIER, "--workdir") == path  # a rerun writes on
    with pytest.raises(UserError, match="is a classifier workdir, not a sweep workdir"):
      workdir.claim(path, workdir.SWEEP, "--workdir")
    assert workdir.require_kind(path, "--workdir", (workdir.SWEEP, workdir.CLASSIFIER)) == workdir.CLASSIFIER


def test_a_folder_whose_mark_is_being_written_is_not_someone_elses(tmp_path):
  # Another process of the same job checks the workdir while the first writes the mark through a temporary file.
  (tmp_path / ".lock").write_text("")
  (tmp_path / f".{workdir.MARK_FILE}.x1y2.tmp")  # as atomic_write_json names it.write_text("{")
  assert workdir.check_claim(str(tmp_path), workdir.SWEEP, "--workdir") == str(tmp_path)
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="already holds files copper_jax did not write"):
    workdir.check_claim(str(tmp_path), workdir.SWEEP, "--workdir")


def test_earlier_versions_folders_are_recognised_by_their_files_and_marked(tmp_path):
  sweep_dir = tmp_path / "sweep"
  sweep_dir.mkdir()
  (sweep_dir / workdir.LOCK_FILE).write_text("123\n")
  (sweep_dir / "config.json").write_text(json.dumps({"hypotheses": ["linear"], "seed": 0}))
  (sweep_dir / "checkpoints").mkdir()
  assert workdir.kind_of(str(sweep_dir)) == workdir.SWEEP
  workdir.claim(str(sweep_dir), workdir.SWEEP, "--workdir")
  assert workdir.read_mark(str(sweep_dir))["recognised_from_earlier_version"] is True
  predictions = tmp_path / "pred" / "sample"
  predictions.mkdir(parents=True)
  (tmp_path / "pred" / "summary.csv").write_text("path,output,height\n")
  (predictions / "a_mask.tif").write_bytes(b"II*\0")
  assert workdir.kind_of(str(tmp_path / "pred")) == workdir.PREDICTIONS
  (predictions / "notes.txt").write_text("mine")  # a file predict never writes: not ours after all
  assert workdir.kind_of(str(tmp_path / "pred")) is None
  # A user's folder with a config.json but not the workdir lock is not a workdir.
  _user_project(tmp_path / "project")
  assert workdir.kind_of(str(tmp_path / "project")) is None


def test_a_damaged_mark_is_named_not_replaced(tmp_path):
  (tmp_path / workdir.MARK_FILE).write_text("{not json")
  with pytest.raises(UserError, match=r"\.copper_jax\.json: unreadable ownership mark"):
    workdir.claim(str(tmp_path), workdir.SWEEP, "--workdir")
  assert (tmp_path / workdir.MARK_FILE).read_text() == "{not json"
  with pytest.raises(UserError, match="not a copper_jax workdir"):
    workdir.require_kind(str(_empty(tmp_path / "e")), "--workdir", workdir.KINDS)


def _empty(path):
  path.mkdir()
  return path


def test_a_damaged_json_file_of_a_workdir_is_named_in_one_line(tmp_path):
  for name, content in (("truncated.json", b'{"ranking": '), ("not_utf8.json", b'{"a": "\xff"}')):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=f"{name} is not valid JSON; restore it") as error:
      workdir.read_json(str(tmp_path / name))
    assert "\n" not in str(error.value)


def test_a_start_an_earlier_version_interrupted_before_its_config_is_taken_by_a_training_run(tmp_path):
  (tmp_path / workdir.LOCK_FILE).write_text("1\n")
  (tmp_path / "splits.json").write_text("{}")
  (tmp_path / "data").mkdir()
  assert workdir.kind_of(str(tmp_path)) is None  # no kind to read from it...
  workdir.claim(str(tmp_path), workdir.CLASSIFIER, "--workdir")  # ...but nothing in it binds a run
  assert workdir.kind_of(str(tmp_path)) == workdir.CLASSIFIER
  (tmp_path / "notes.txt").write_text("mine")
  other = tmp_path / "other"
  other.mkdir()
  (other / workdir.LOCK_FILE).write_text("1\n")
  (other / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="did not write"):
    workdir.claim(str(other), workdir.SWEEP, "--workdir")
