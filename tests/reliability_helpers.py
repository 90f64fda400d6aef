"""Running the launchers as real processes, killing them at chosen moments, and comparing what they leave behind."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from copper_jax.store import logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLL_S = 0.005
# How long a test waits for a child process or a reply before calling it hung. Only a hang reaches it: a loaded
# machine may be many times slower than an idle one, and no test may fail for that.
HANG_S = 3600


def launcher_env(compile_cache: str | None = None) -> dict:
  """Environment for a launcher subprocess: CPU only, this checkout's package first, and optionally a persistent
  compilation cache so a restarted run does not spend seconds recompiling (its programs are the same bytes)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  if compile_cache:
    env.update(COPPER_JAX_COMPILE_CACHE=compile_cache, JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


class Launch:
  """One launcher process (`launch/<script>`), its stderr kept in a file next to the workdir."""

  def __init__(self, script: str, args: list, log_path: str, compile_cache: str | None = None):
    self.log_path = log_path
    self._log = open(log_path, "wb")
    self.proc = subprocess.Popen([sys.executable, os.path.join("launch", script), *args], cwd=ROOT,
                                 env=launcher_env(compile_cache), stdout=self._log, stderr=subprocess.STDOUT)

  def wait(self, timeout: float) -> int:
    try:
      return self.proc.wait(timeout)
    finally:
      self._log.close()

  def output(self) -> str:
    with open(self.log_path, encoding="utf-8", errors="replace") as f:
      return f.read()

  def kill_when(self, moment, timeout: float) -> bool:
    """SIGKILLs the process at the first poll where `moment()` holds; False if it exited first.

    The process is stopped (SIGSTOP) as soon as `moment()` holds and the moment checked again while it cannot
    move, so the kill lands exactly in that state; if the state was left in between, it runs on to the next one.
    """
    deadline = time.monotonic() + timeout
    while self.proc.poll() is None:
      if time.monotonic() > deadline:
        self.proc.kill()
        self.wait(10)
        raise AssertionError(f"no kill moment within {timeout} s; log: {self.log_path}")
      if moment():
        self.proc.send_signal(signal.SIGSTOP)
        if moment():
          self.proc.send_signal(signal.SIGKILL)
          self.wait(10)
          return True
        self.proc.send_signal(signal.SIGCONT)
      time.sleep(POLL_S)
    self.wait(10)
    return False

  def kill_after(self, seconds: float) -> bool:
    """SIGKILLs the process `seconds` after now; False if it exited first."""
    try:
      self.proc.wait(seconds)
    except subprocess.TimeoutExpired:
      self.proc.send_signal(signal.SIGKILL)
      self.wait(10)
      return True
    self.wait(10)
    return False


def checkpoint_steps(work_dir: str) -> list[int]:
  """Complete checkpoint steps in work_dir/checkpoints (orbax renames a step into place when it is complete)."""
  folder = os.path.join(work_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def saving_now(work_dir: str) -> bool:
  """True while orbax is writing a step (its temporary directory exists)."""
  folder = os.path.join(work_dir, "checkpoints")
  return os.path.isdir(folder) and any("orbax-checkpoint-tmp" in n for n in os.listdir(folder))


def metric_steps(work_dir: str) -> list[int]:
  """Steps of the complete lines of metrics.jsonl."""
  try:
    with open(os.path.join(work_dir, "metrics.jsonl"), encoding="utf-8") as f:
      lines = f.read().split("\n")[:-1]  # the last element is "" or a line still being written
  except FileNotFoundError:
    return []
  return [json.loads(line)["step"] for line in lines if line]


def saved_arrays(work_dir: str, step: int) -> dict:
  """{leaf path: numpy array} of the training state saved at `step`, read back by orbax with no target."""
  restored = ocp.StandardCheckpointer().restore(os.path.join(work_dir, "checkpoints", str(step), "state"))
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


def assert_same_arrays(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def text(work_dir: str, name: str) -> str:
  """A workdir file's text with the workdir's own path replaced, so two workdirs' files compare directly; in
  metrics.jsonl the lines lose their timing keys (when each was written, and the speed), which no rerun repeats."""
  with open(os.path.join(work_dir, name), encoding="utf-8") as f:
    content = f.read().replace(os.path.abspath(work_dir), "<workdir>")
  if name == logs.METRICS_FILE:
    content = "".join(_without_timing(line) + "\n" for line in content.splitlines())
  return content


def _without_timing(line: str) -> str:
  try:
    record = json.loads(line)
  except ValueError:
    return line  # a partial line stays as it is, so it still differs from a whole one
  return json.dumps({k: v for k, v in record.items() if k not in logs.TIMING_KEYS})


def strict_json(path: str):
  """The file parsed as standard JSON: no NaN or Infinity, nothing half-written."""
  def refuse(token):
    raise ValueError(f"{path} holds {token}, which is not JSON")
  with open(path, encoding="utf-8") as f:
    return json.loads(f.read(), parse_constant=refuse)


def json_files_are_whole(work_dir: str) -> None:
  """Every JSON file at the top of a workdir parses: a kill never leaves one half-written."""
  for name in os.listdir(work_dir) if os.path.isdir(work_dir) else []:
    if name.endswith(".json"):
      with open(os.path.join(work_dir, name), encoding="utf-8") as f:
        json.load(f)


def png_claiming(width: int, height: int) -> bytes:
  """A PNG whose header declares width x height 8-bit gray pixels but which holds a few bytes of pixel data."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
