"""Checkpoints of one run: an orbax CheckpointManager per directory, with strict, verified restore.

Each step directory holds three orbax items:
  state     the training-state pytree (StandardSave: tensorstore/OCDBT array files plus a _METADATA tree),
  meta      a JSON dict from the caller; it must hold "config_hash" (and should hold "fingerprint", see
            `config_fingerprint`) so restore can refuse a checkpoint written under another config,
  manifest  JSON written by this module: path, shape, dtype and CRC-32 of every state leaf, and the step's
            best-metric value.
orbax itself does not notice a garbled array file (it restores wrong numbers silently) nor a target of another
dtype (it casts), so restore checks the target against the manifest before reading and every value after.
"""
import errno
import functools
import gc
import glob
import hashlib
import json
import math
import os
import shutil
import threading
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from copper_jax import config_utils, preemption, processes
from copper_jax.errors import CheckpointError

STATE, META, MANIFEST = "state", "meta", "manifest"
_MANIFEST_FORMAT = 1
_ABSENT = "<absent>"


def config_fingerprint(config, keys: list[str]) -> tuple[dict, str]:
  """({dotted key: JSON value} for `keys`, sha256 hex of that dict's canonical JSON)."""
  flat = {key: config_utils.to_jsonable(config_utils.get(config, key), key) for key in keys}
  text = json.dumps(flat, sort_keys=True, separators=(",", ":"))
  return flat, hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Unreadable(Exception):
  """A step whose files are missing, truncated or garbled; restore falls back to an earlier step."""


def _host(leaf) -> np.ndarray:
  return np.asarray(processes.to_host(leaf))


def _crc(array: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _spec(shape, dtype) -> str:
  return f"{np.dtype(dtype).name}[{','.join(str(d) for d in shape)}]"


def _manifest(state, best_value: float | None) -> dict:
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = _host(leaf)
    leaves.append({"path": jax.tree_util.keystr(path), "shape": list(array.shape), "dtype": array.dtype.name,
                   "crc32": _crc(array)})
  return {"format": _MANIFEST_FORMAT, "leaves": leaves, "best_value": best_value}


def _placed(abstract_state):
  """The target with a placement for every leaf: this process's first device where the target names none.

  Without one, orbax places arrays as they were saved, and refuses when the devices differ (a sweep saved by two
  processes, evaluated by one).
  """
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default),
      abstract_state)


def _short(value) -> str:
  text = value if value is _ABSENT else json.dumps(value, sort_keys=True)
  return text if len(text) <= 40 else text[:37] + "..."


def _disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, says the disk (or the user's quota) is full."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error):  # tensorstore reports errno as text
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= 160 else text[:157] + "..."


class _KeepStep:
  """orbax preservation policy keeping one step chosen by the Checkpointer (the best one), if any."""

  def __init__(self):
    self.step = None

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context  # Unused; part of orbax's PreservationPolicy protocol.
    return [info.step == self.step for info in checkpoints]


def _whole(method):
  """Runs `method` with SIGTERM and SIGINT held until it returns (`preemption.signals_held`): a signal then stops
  the run between two orbax calls, never inside one."""
  @functools.wraps(method)
  def held(*args, **kwargs):
    with preemption.signals_held():
      return method(*args, **kwargs)
  return held


class Checkpointer:
  """Saves and strictly restores (state, meta) checkpoints in `directory`.

  Keeps the latest `max_to_keep` steps and, when `best_metric` is set, also the step with the best value of
  `meta["metrics"][best_metric]` (highest for best_mode="max", lowest for "min").
  """

  @_whole
  def __init__(self, directory: str, *, max_to_keep: int = 2, best_metric: str | None = None,
               best_mode: str = "max"):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep}: need at least 1 so the latest step is kept")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode={best_mode!r}: use 'max' or 'min'")
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self._sign = 1.0 if best_mode == "max" else -1.0
    # The best step is tracked here rather than with orbax's best_fn: orbax then reads a metrics file of every
    # step on open and fails outright if one is garbled, which would make the whole directory unusable.
    self._best = _KeepStep()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.AnyPreservationPolicy(
            [preservation_policy.LatestN(n=max_to_keep), self._best]),
        # Synchronous: save returns only once the step directory has been renamed into place.
        enable_async_checkpointing=False,
        # Removes *.orbax-checkpoint-tmp-* directories left by a run killed mid-save.
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, META, MANIFEST))
    self._best_values = {}
    if best_metric:
      for step in self.all_steps():
        try:
          value = self._read_json_item(step, MANIFEST).get("best_value")
        except _Unreadable:
          continue  # A broken step is never the best; restore reports it if it is ever asked for.
        if value is not None:
          self._best_values[step] = float(value)
      self._update_best()

  def _update_best(self, pending: int | None = None) -> None:
    """Points the keep-policy at the best of the steps on disk (plus `pending`, about to be saved)."""
    on_disk = set(self._manager.all_steps())
    self._best_values = {s: v for s, v in self._best_values.items() if s in on_disk or s == pending}
    # Ties go to the earlier step: it reached the value first.
    ranked = sorted(self._best_values.items(), key=lambda item: (-self._sign * item[1], item[0]))
    self._best.step = ranked[0][0] if ranked else None

  def all_steps(self) -> list[int]:
    """Finalised steps on disk, ascending (unfinished saves are never listed)."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """Step with the best `best_metric` value; None without best_metric or before any step had a value."""
    return self._best.step

  @_whole
  def save(self, step: int, state, meta: dict, *, best_value: float | None = None) -> None:
    """Writes step `step` and returns once it is complete on disk.

    orbax writes into a temporary directory and renames it, so a kill mid-save leaves the previous steps as they
    were. Steps >= `step` already on disk belong to a run that was rewound (restored from an earlier or fallback
    step) and are deleted first, with a warning. `best_value` defaults to meta["metrics"][best_metric]. When the
    disk is full, the half-written step is removed and CheckpointError says which earlier step is intact.
    """
    step = int(step)
    if "config_hash" not in meta:
      raise ValueError("meta needs a 'config_hash' (see config_fingerprint) so restore can check the config")
    if best_value is not None and not self.best_metric:
      raise ValueError("best_value given but this Checkpointer has no best_metric")
    if best_value is None and self.best_metric:
      best_value = (meta.get("metrics") or {}).get(self.best_metric)
    # NaN or inf (a diverged run) must never become the best.
    best_value = float(best_value) if best_value is not None and math.isfinite(float(best_value)) else None
    stale = [s for s in self.all_steps() if s >= step]
    if stale:
      warnings.warn(f"deleting checkpoints {stale} in {self.directory}: they are at or after step {step} "
                    "from a run that was rewound", stacklevel=2)
      for s in stale:
        self._manager.delete(s)
      self._update_best()
    # Decide the best before saving: orbax deletes old steps as part of save, asking the policy what to keep.
    previous = dict(self._best_values)
    if best_value is not None:
      self._best_values[step] = best_value
      self._update_best(pending=step)
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta),
                                 MANIFEST: ocp.args.JsonSave(_manifest(state, best_value))})
    threads_before = set(threading.enumerate())
    try:
      if not self._manager.save(step, args=args, force=True):
        raise RuntimeError(f"orbax did not save step {step} in {self.directory}")
      self._manager.wait_until_finished()
    except BaseException as e:
      self._best_values = previous
      self._update_best()
      if not _disk_full(e):
        raise
      reason = _first_line(e)
    else:
      return
    # Outside the except block, so the failed save's frames (and the asyncio futures they hold) can be freed.
    self._clean_up_full_disk(step, set(threading.enumerate()) - threads_before, reason)

  def _clean_up_full_disk(self, step: int, writers, reason: str) -> None:
    """Removes the half-written `step` and raises CheckpointError saying which earlier step is intact."""
    # orbax raises at the first failed write while its other writer threads still run: wait for them, or they
    # would recreate files in the step removed below (on a full disk each fails at its next write; no deadline,
    # which a loaded machine would miss).
    for thread in writers:
      try:
        thread.join()
      except Exception:  # pylint: disable=broad-except
        pass  # orbax's threads re-raise their own write error on join; the first one is reported below
    # Their asyncio futures log "exception was never retrieved" when collected: now, not after our message.
    gc.collect()
    # The half-written step would keep the disk full until the next open cleaned it up; the steps before it
    # were never touched (orbax writes a temporary directory and renames it only when complete).
    for partial in glob.glob(os.path.join(glob.escape(self.directory), f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(partial, ignore_errors=True)
    kept = [s for s in self.all_steps() if s < step]
    intact = f"step {kept[-1]} is intact" if kept else "no earlier step was saved"
    raise CheckpointError(f"disk full while saving checkpoint step {step} in {self.directory} ({reason}); "
                          f"{intact}: free space and rerun the same command to resume")

  @_whole
  def restore(self, abstract_state, expected_meta: dict, step: int | None = None,
              which: str = "latest") -> tuple:
    """(state, meta) of `step`, or of the latest ("latest") or best ("best") step.

    `abstract_state` is the target pytree (e.g. jax.eval_shape of the init function); the result has exactly its
    structure, shapes and dtypes. Raises CheckpointError if the checkpoint's config hash differs from
    expected_meta["config_hash"] or its leaves differ from the target. An unreadable latest step is skipped with
    a warning in favour of the previous one; an unreadable requested or best step is an error.
    """
    if step is not None:
      candidates = [int(step)]
      if candidates[0] not in self.all_steps():
        raise CheckpointError(f"no checkpoint for step {step} in {self.directory} (steps there: "
                              f"{self.all_steps()}): pick one of those steps")
    elif which == "latest":
      candidates = self.all_steps()[::-1]
    elif which == "best":
      best = self.best_step()
      candidates = [] if best is None else [best]
    else:
      raise ValueError(f"which={which!r}: use 'latest' or 'best'")
    if not candidates:
      raise CheckpointError(f"no {which} checkpoint in {self.directory}: start without restoring or point "
                            "--workdir at a run that saved one")
    failures = []
    for i, candidate in enumerate(candidates):
      try:
        return self._restore_step(candidate, abstract_state, expected_meta)
      except _Unreadable as e:
        failures.append(f"step {candidate}: {e}")
        if i + 1 < len(candidates):
          warnings.warn(f"checkpoint step {candidate} in {self.directory} is unreadable ({e}); falling back to "
                        f"step {candidates[i + 1]}", stacklevel=2)
    raise CheckpointError(f"no readable checkpoint in {self.directory} ({'; '.join(failures)}): delete the broken "
                          "step directories or use a fresh --workdir")

  def _read_json_item(self, step: int, name: str) -> dict:
    try:
      value = getattr(self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()})), name)
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(f"{name}: {_first_line(e)}") from e
    if not isinstance(value, dict):
      raise _Unreadable(f"{name} is {type(value).__name__}, not a JSON object")
    return value

  def _restore_step(self, step: int, abstract_state, expected_meta: dict) -> tuple:
    meta = self._read_json_item(step, META)
    self._check_config(step, meta, expected_meta)
    manifest = self._read_json_item(step, MANIFEST)
    saved = manifest.get("leaves")
    if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(saved, list):
      raise _Unreadable(f"manifest has format {manifest.get('format')!r}, expected {_MANIFEST_FORMAT}")
    # Check the target against what was saved before reading: orbax would cast dtypes and may accept other trees.
    target = [(jax.tree_util.keystr(path), tuple(leaf.shape), np.dtype(leaf.dtype).name)
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]]
    try:
      stored = [(entry["path"], tuple(entry["shape"]), entry["dtype"]) for entry in saved]
    except (KeyError, TypeError) as e:
      raise _Unreadable(f"manifest entry lacks {e}") from e
    self._check_leaves(step, stored, target)
    try:
      state = getattr(self._manager.restore(
          step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(_placed(abstract_state))})), STATE)
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(f"state: {_first_line(e)}") from e
    # orbax has been seen to restore partial trees; never hand one back.
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(abstract_state):
      raise CheckpointError(f"checkpoint step {step} in {self.directory} restored a tree whose containers differ "
                            "from the target's: use the code that wrote it or a fresh --workdir")
    restored = jax.tree_util.tree_flatten_with_path(state)[0]
    self._check_leaves(step, [(jax.tree_util.keystr(p), tuple(np.shape(x)), np.dtype(x.dtype).name)
                              for p, x in restored], target)
    hosts = []
    for (path, leaf), entry in zip(restored, saved):
      hosts.append(_host(leaf))
      if _crc(hosts[-1]) != entry.get("crc32"):
        raise _Unreadable(f"leaf {path} does not match its saved checksum (garbled file)")
    # orbax hands back arrays committed to a device; a fresh run's are not. The two lower to programs that differ
    # in sharding annotations only, enough for a resumed run or an evaluation to miss the compilation cache.
    # The caller places them where its program wants them.
    # Arrays spread over several processes stay where orbax put them (the target's sharding).
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), [
        jnp.asarray(h) if leaf.is_fully_addressable else leaf for (_, leaf), h in zip(restored, hosts)])
    return state, meta

  def _check_config(self, step: int, meta: dict, expected_meta: dict) -> None:
    if meta.get("config_hash") == expected_meta.get("config_hash"):
      return
    saved_fp = meta.get("fingerprint") or {}
    now_fp = json.loads(json.dumps(expected_meta.get("fingerprint") or {}))
    diffs = []
    # A key the saved fingerprint lacks was not yet part of it when the checkpoint was written (the fingerprint is
    # derived from the config's declarations and grows with them): the run's config.json answers for it, with the
    # key's value for older workdirs filled in (config_rules.complete). A saved key that is gone now still differs.
    for key in [k for k in now_fp if k in saved_fp] + [k for k in saved_fp if k not in now_fp]:
      before, now = saved_fp.get(key, _ABSENT), now_fp.get(key, _ABSENT)
      if before != now:
        diffs.append(f"{key} saved {_short(before)} vs now {_short(now)}")
    if not diffs and saved_fp and set(saved_fp) <= set(now_fp):
      return
    if not diffs:
      diffs = [f"config_hash saved {str(meta.get('config_hash'))[:12]} vs now "
               f"{str(expected_meta.get('config_hash'))[:12]}"]
    what = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    raise CheckpointError(f"checkpoint step {step} in {self.directory} was written with a different config "
                          f"({what}): use a fresh --workdir or restore the old config")

  def _check_leaves(self, step: int, stored: list, target: list) -> None:
    stored_by_path = {path: (shape, dtype) for path, shape, dtype in stored}
    target_paths = {path for path, _, _ in target}
    problem = None
    for path, shape, dtype in target:
      if path not in stored_by_path:
        problem = f"leaf {path} ({_spec(shape, dtype)}) is not in the checkpoint"
      elif stored_by_path[path] != (shape, dtype):
        problem = f"leaf {path} saved {_spec(*stored_by_path[path])} vs now {_spec(shape, dtype)}"
      if problem:
        break
    else:
      extra = [path for path, _, _ in stored if path not in target_paths]
      if extra:
        problem = f"leaf {extra[0]} in the checkpoint is not in the state now"
      elif [p for p, _, _ in stored] != [p for p, _, _ in target]:
        problem = "leaves are in another order"
    if problem:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} does not fit the state: {problem}; "
                            "use the code and config that wrote it or a fresh --workdir")

  @_whole
  def close(self) -> None:
    """Waits for orbax's pending writes and its clean-up of an interrupted save's temporary folder (which orbax runs
    in the background from open and awaits only in its next save: a restore-only run closing early would leave it
    half done); a disk that filled during them is the one-line CheckpointError."""
    try:
      await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
      if await_cleanup is not None:
        await_cleanup()
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      # tensorstore reports a full disk as ValueError("RESOURCE_EXHAUSTED: ... No space left on device").
      if not _disk_full(e):
        raise
      reason = _first_line(e)
    else:
      return
    for partial in glob.glob(os.path.join(glob.escape(self.directory), "*.orbax-checkpoint-tmp*")):
      shutil.rmtree(partial, ignore_errors=True)
    # The manager is closed: the finalised steps are the folders named by a step number.
    kept = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
    intact = f"step {kept[-1]} is intact" if kept else "no step was saved"
    raise CheckpointError(f"disk full while saving a checkpoint in {self.directory} ({reason}); {intact}: free "
                          f"space and rerun the same command to resume")

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      self.close()
    except CheckpointError:
      if exc is None:
        raise
      # The error that ended the block (e.g. the disk-full line of `save`) is the one to report.
