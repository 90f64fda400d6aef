"""Safe files in a workdir: whose folder it is, atomic writes, one process per workdir, the run's config.json."""
import contextlib
import errno
import json
import os
import shutil
import tempfile

import ml_collections

from copper_jax import config_utils, processes
from copper_jax.errors import ConfigError, UserError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Every folder copper_jax creates holds this file, naming what the folder is; a folder without it is someone else's.
MARK_FILE = ".copper_jax.json"
MARK_FORMAT = 1
SWEEP, CLASSIFIER, GRID_SEARCH = "sweep", "classifier", "grid_search"
PREDICTIONS, BLIND_TEST_ANSWERS, SYNTHETIC = "predictions", "blind_test_answers", "synthetic"
KINDS = (SWEEP, CLASSIFIER, GRID_SEARCH, PREDICTIONS, BLIND_TEST_ANSWERS, SYNTHETIC)
_KIND_WORDS = {SWEEP: "a sweep workdir", CLASSIFIER: "a classifier workdir", GRID_SEARCH: "a grid-search workdir",
               PREDICTIONS: "a predictions folder", BLIND_TEST_ANSWERS: "a blind test's answers folder",
               SYNTHETIC: "a synthetic dataset"}


def _fsync_dir(directory: str) -> None:
  # The rename is only durable once the directory entry is on disk; some filesystems refuse to fsync a directory.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write_bytes(path: str, data: bytes, durable: bool = True) -> None:
  """Replaces `path` with `data` all at once: readers and crashes see the old file or the new one, never a mix.

  On failure (e.g. disk full) the old file is left intact, the temp file is removed and the OSError propagates.
  `durable=False` skips the fsyncs, for files that can be made again (a generated dataset): a power cut may then
  lose the file, but never leaves half of one.
  """
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  # Same directory as the target, so os.replace is a rename within one filesystem.
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(fd, view):]
      # mkstemp creates 0600; keep the old file's mode, or the usual 0644 for a new one.
      os.fchmod(fd, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644)
      if durable:
        os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  if durable:
    _fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> None:
  """`atomic_write_bytes` of `obj` as indented JSON with sorted keys and a final newline."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str, missing=None, fix: str | None = None):
  """A JSON file's content; `missing` when the file does not exist. A file that is not valid UTF-8 JSON (damaged,
  truncated, tampered with) is a ConfigError naming the file and `fix` (by default: restore it)."""
  if not os.path.exists(path):
    return missing
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError:  # UnicodeDecodeError included
      raise ConfigError(f"{path} is not valid JSON; "
                        f"{fix or 'restore it from a backup, or delete it if the run can write it again'}") from None


def _inside(path: str, folder: str) -> bool:
  """Whether real path `path` is `folder` or lies below it (both already resolved)."""
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(path, flag: str, inputs=()) -> str:
  """The absolute path of an output folder a job may create and write, checked before any work; UserError
  naming `flag` otherwise: an empty name, a file in its place or above it, no write permission or a read-only
  filesystem, or a folder equal to or inside one of `inputs` (folders the job reads; empty entries ignored).

  Nothing is left behind: writability is tried with a temporary file that is removed at once.
  """
  if isinstance(path, os.PathLike):
    path = os.fspath(path)
  if not isinstance(path, str) or not path.strip():
    raise UserError(f"{flag} is empty: give the folder to write into, e.g. {flag}=runs/mine")
  absolute = os.path.abspath(path)
  if os.path.exists(absolute) and not os.path.isdir(absolute):
    raise UserError(f"{flag}={path} is a file, not a folder: choose another path or move the file away")
  existing = absolute
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f"{flag}={path}: {existing} is a file, so no folder can be made below it; choose another path")
  try:
    fd, probe = tempfile.mkstemp(dir=existing, prefix=".copper_jax_probe.")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f"{flag}={path}: cannot write in {existing} ({e.strerror}); choose a writable folder") from None
  real = os.path.realpath(absolute)
  for source in inputs:
    if source and _inside(real, os.path.realpath(source)):
      raise UserError(f"{flag}={path} is {'the' if real == os.path.realpath(source) else 'inside the'} input "
                      f"folder {source}, which is read as data; choose a folder outside it")
  return absolute


def read_mark(folder: str) -> dict | None:
  """The ownership mark of `folder` ({"kind": ..., "format": 1, ...}), None when it has none; UserError naming the
  file when it is damaged (it is never rewritten silently: the folder's kind would be a guess)."""
  path = os.path.join(folder, MARK_FILE)
  if not os.path.lexists(path):
    return None
  fix = ("restore it, or delete it if you know the folder is copper_jax's own (an earlier version's folder is "
         "recognised by its files)")
  try:
    with open(path, encoding="utf-8") as f:
      mark = json.load(f)
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: unreadable ownership mark ({type(e).__name__}); {fix}") from None
  if not isinstance(mark, dict) or mark.get("kind") not in KINDS:
    raise UserError(f"{path}: not an ownership mark of one of {', '.join(KINDS)}; {fix}")
  return mark


def _foreign_entries(folder: str) -> list[str]:
  """Entries of `folder` other than the mark (and the temporary file it is written through: another process of the
  same job may look while the first writes it), the lock and a writability probe: what makes it not empty."""
  return sorted(n for n in os.listdir(folder) if n not in (MARK_FILE, LOCK_FILE)
                and not n.startswith((".copper_jax_probe.", f".{MARK_FILE}.")))


def _json_object(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return data if isinstance(data, dict) else None


# What a training run writes before its config.json: a start an earlier version interrupted there left only these.
_FIRST_FILES = {"splits.json", "data_summary.json", "data"}
_TRAINING = "training"  # such a start: any training kind may take it (no checkpoint was written without config.json)


def _earlier_kind(folder: str) -> str | None:
  """The kind of a folder an earlier copper_jax (before marks) wrote, recognised by files only it writes; None
  for anything else. Training workdirs: the workdir lock plus a config.json of that program; predictions: a
  summary.csv with predict's header, beside predict's own files only; a synthetic set: its manifest; answers:
  only answer files."""
  entries = _foreign_entries(folder)
  if os.path.isfile(os.path.join(folder, LOCK_FILE)):
    config = _json_object(os.path.join(folder, CONFIG_FILE))
    if config is not None:
      return SWEEP if "hypotheses" in config else GRID_SEARCH if "grid" in config else CLASSIFIER
    if set(entries) <= _FIRST_FILES:
      return _TRAINING
  manifest = (_json_object(os.path.join(folder, "manifest.json"))
              or _json_object(os.path.join(folder, ".manifest.partial.json")))
  if manifest is not None and {"f_true", "labels", "seed"} <= set(manifest):
    return SYNTHETIC
  try:
    with open(os.path.join(folder, "summary.csv"), encoding="utf-8") as f:
      header = f.readline()
  except (OSError, UnicodeDecodeError):
    header = ""
  if header.startswith("path,output,"):
    own = {"summary.csv", "samples.csv", "about.txt", "skipped.txt"}
    suffixes = ("_mask.tif", "_probability.tif", "_overlay.png", "_cam.png")
    for parent, dirs, files in os.walk(folder):
      if any(not (n in own and parent == folder) and not n.endswith(suffixes) for n in files):
        return None
    return PREDICTIONS
  if entries and all(n.endswith(".json") and os.path.isfile(os.path.join(folder, n)) for n in entries) \
      and os.path.basename(os.path.normpath(folder)) == "blind_test":
    return BLIND_TEST_ANSWERS
  return None


def kind_of(folder: str) -> str | None:
  """What copper_jax folder `folder` is (one of KINDS): its mark's kind, or the kind an earlier version's files
  show; None for a folder copper_jax did not make (or an empty one)."""
  if not os.path.isdir(folder):
    return None
  mark = read_mark(folder)
  if mark:
    return mark["kind"]
  kind = _earlier_kind(folder)
  return None if kind == _TRAINING else kind


def check_claim(path: str, kind: str, flag: str) -> str:
  """The absolute path of a folder a job of `kind` may write into, checked before any work (reads only): new,
  empty, or already copper_jax's own folder of that kind. UserError naming `flag` for a folder that holds
  someone else's files or is another kind of copper_jax folder."""
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}")
  absolute = os.path.abspath(path)
  if not os.path.isdir(absolute):
    return absolute
  found = kind_of(absolute)
  if found == kind or (found is None and read_mark(absolute) is None and kind in (SWEEP, CLASSIFIER, GRID_SEARCH)
                       and _earlier_kind(absolute) == _TRAINING):
    return absolute
  if found is not None:
    raise UserError(f"{flag}={path} is {_KIND_WORDS[found]}, not {_KIND_WORDS[kind]}: name a new folder")
  foreign = _foreign_entries(absolute)
  if foreign:
    shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise UserError(f"{flag}={path} already holds files copper_jax did not write ({shown}); name a new folder, "
                    f"nothing was changed")
  return absolute


def claim(path: str, kind: str, flag: str) -> str:
  """`check_claim`, then creates the folder and marks it as copper_jax's `kind` (an earlier version's folder is
  marked as it is recognised, so it resumes). Only the first process of a job writes the mark."""
  absolute = check_claim(path, kind, flag)
  if not processes.is_primary():
    return absolute
  try:
    os.makedirs(absolute, exist_ok=True)
    if read_mark(absolute) is None:
      atomic_write_json(os.path.join(absolute, MARK_FILE), {
          "kind": kind, "format": MARK_FORMAT, "made_by": "copper_jax",
          "recognised_from_earlier_version": bool(_foreign_entries(absolute))})
  except OSError as e:
    raise UserError(f"{flag}={path}: cannot write in it ({e.strerror}); choose a writable folder") from None
  return absolute


def require_kind(path: str, flag: str, kinds) -> str:
  """The kind of an existing copper_jax folder a job reads (one of `kinds`); UserError naming `flag` otherwise."""
  if not os.path.isdir(path):
    raise UserError(f"{flag}={path}: no such folder; give a workdir written by launch/sweep.py or launch/train.py")
  found = kind_of(path)
  if found is None:
    raise UserError(f"{flag}={path} is not a copper_jax workdir (no {MARK_FILE} and no files of an earlier "
                    f"version); give a workdir written by launch/sweep.py or launch/train.py")
  if found not in kinds:
    raise UserError(f"{flag}={path} is {_KIND_WORDS[found]}; give "
                    f"{' or '.join(_KIND_WORDS[k] for k in kinds)}")
  return found


class Start:
  """What `locked_start` yields: `commit()` marks the point after which the workdir is kept whatever happens."""

  def __init__(self):
    self.committed = False

  def commit(self) -> None:
    self.committed = True


@contextlib.contextmanager
def locked_start(work_dir: str, kind: str):
  """`WorkdirLock` on `work_dir` for a training run of `kind`, yielding a `Start`; the folder must be new, empty or
  this kind's own (`check_claim`), and is marked once locked. When a UserError escapes before `commit()` and the
  folder did not exist before, the folder is removed again: a start refused for its data or its config leaves
  nothing behind. A workdir that existed is never removed (its checks run before it is written)."""
  check_claim(work_dir, kind, "--workdir")
  existed = os.path.exists(work_dir)
  start = Start()
  lock = WorkdirLock(work_dir)
  with lock:
    try:
      claim(work_dir, kind, "--workdir")
      yield start
    except UserError:
      if not existed and not start.committed:
        lock.release()
        shutil.rmtree(work_dir, ignore_errors=True)
      raise


class WorkdirLock:
  """Exclusive lock on `workdir/.lock` so two copper_jax processes never write one workdir.

  Uses flock, which the kernel drops when the process dies, so a killed run never leaves a stale lock. The lock
  file stays in place: deleting it would let a second process lock a fresh inode while the first still runs.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    if self._fd is not None:
      raise RuntimeError(f"WorkdirLock for {self.workdir} is already held by this object")
    if not processes.is_primary():
      return self  # one job of several processes: the first one holds the lock for all
    fcntl = _fcntl()
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise UserError(f"workdir {self.workdir} cannot be written ({e.strerror}): a run writes its results there; "
                      f"make it writable, or copy it to a writable place and give that --workdir") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise
      holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
      os.close(fd)
      raise UserError(f"workdir {self.workdir} is in use by another copper_jax process (pid {holder}); "
                      "wait for it or choose another --workdir") from None
    # The pid is only for the message above; the lock itself is the flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def release(self) -> None:
    """Drops the lock (also done by the kernel when the process exits)."""
    if self._fd is not None:
      fcntl = _fcntl()
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _fcntl():
  """The POSIX fcntl module; UserError on systems without it, so the package still imports there."""
  try:
    import fcntl
  except ImportError:
    raise UserError("copper_jax's workdir lock needs POSIX file locks (Linux or macOS); on Windows run it in WSL2") \
        from None
  return fcntl


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict saved in `workdir/config.json` (tuples come back as lists)."""
  path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise UserError(f"no {CONFIG_FILE} in {os.path.abspath(workdir)}: is it a copper_jax workdir?") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({e}): restore it from a backup or use a fresh --workdir") from None
  if not isinstance(data, dict):
    raise UserError(f"{path} does not hold a JSON object: restore it from a backup or use a fresh --workdir")
  return ml_collections.ConfigDict(data)


def _differs(saved: dict, new: dict, keys: list[str] | None) -> bool:
  if keys is None:
    return config_utils.config_to_json(saved) != config_utils.config_to_json(new)
  missing = object()
  for key in keys:
    a, b = config_utils.get(saved, key, missing), config_utils.get(new, key, missing)
    if (a is missing) != (b is missing):
      return True
    if a is not missing and config_utils.config_to_json({"v": a}) != config_utils.config_to_json({"v": b}):
      return True
  return False


def save_config(workdir: str, config, keys: list[str] | None = None) -> ml_collections.ConfigDict | None:
  """Writes `workdir/config.json` unless the saved one differs from `config` in `keys` (all keys when None).

  Returns None when config.json now holds `config`. Returns the saved ConfigDict, leaving the file untouched,
  when it differs in `keys`: the caller decides whether that is an error. A difference only in other keys (e.g. a
  resumed run with more steps) rewrites the file, so it always describes the latest run.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  new = json.loads(config_utils.config_to_json(config))
  if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    saved = load_config(workdir)
    if _differs(saved.to_dict(), new, keys):
      return saved
    if config_utils.config_to_json(saved) == config_utils.config_to_json(new):
      return None
  atomic_write_json(os.path.join(workdir, CONFIG_FILE), new)
  return None


def config_differences(saved, config, keys: list[str]) -> list[str]:
  """'key old -> new' for each dotted key whose value differs between two configs (JSON-normalised)."""
  value = lambda c, k: json.loads(json.dumps(config_utils.to_jsonable(config_utils.get(c, k, None), k)))
  return [f"{k} {value(saved, k)!r} -> {value(config, k)!r}" for k in keys if value(saved, k) != value(config, k)]


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds at least one saved step."""
  checkpoints = os.path.join(workdir, "checkpoints")
  return os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
