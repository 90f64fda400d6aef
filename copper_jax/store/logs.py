"""Metrics people expect: metrics.jsonl, TensorBoard scalars and a progress bar on stderr.

TensorBoard event files come from tensorboardX (no TensorFlow); the bar is tqdm's.
"""
import json
import os
import sys
import threading
import time

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from copper_jax import processes
from copper_jax.store import workdir as workdir_lib

# tqdm otherwise makes its lock on the first write, a multiprocessing lock whose import a SIGTERM or Ctrl-C can
# interrupt, leaving tqdm without a lock and the one-line stop as a traceback. One process draws our bars.
tqdm.tqdm.set_lock(threading.RLock())

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"
# Keys MetricWriter adds to every metrics.jsonl line: when it was written (Unix seconds) and the training speed
# since the writer's previous line. They differ between two runs of the same numbers; compare lines without them.
TIMING_KEYS = ("wall_time", "steps_per_second")


def _number(key: str, value):
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  try:
    return float(value)  # Also takes 0-d jax/numpy arrays.
  except (TypeError, ValueError):
    raise TypeError(f"metric {key!r}={value!r} is not a number") from None


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` (one JSON object per line) and to a TensorBoard event file.

  Non-finite values are written as NaN/Infinity (Python's json reads them back). On resume, call
  `truncate_after(workdir, restored_step)` before creating the writer, and pass `resume_step=restored_step`: the
  new event file then opens with a purge of later steps, so TensorBoard drops what a killed run logged after its
  last checkpoint from the older files.
  """

  def __init__(self, workdir: str, quiet: bool = False, resume_step: int = 0):
    self.workdir = os.path.abspath(workdir)
    self.quiet = quiet
    self._jsonl = None
    if not processes.is_primary():
      return  # several processes log the same numbers: the first writes them (see copper_jax.processes)
    os.makedirs(os.path.join(self.workdir, TB_DIR), exist_ok=True)
    path = os.path.join(self.workdir, METRICS_FILE)
    # O_APPEND and one write per line: a kill leaves whole lines, except at worst a partial last one.
    self._jsonl = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    size = os.fstat(self._jsonl).st_size
    if size:
      with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
          # A killed run left half a line: end it so the next record is not glued onto it.
          os.write(self._jsonl, b"\n")
    # tensorboardX names a file by the second and opens it for writing: the suffix keeps a restart within the same
    # second from erasing the earlier file.
    self._tensorboard = SummaryWriter(logdir=os.path.join(self.workdir, TB_DIR),
                                      purge_step=resume_step + 1 if resume_step else None,
                                      filename_suffix=f".{os.getpid()}.{time.time_ns()}")
    self._last = None  # (step, time.time()) of the previous line, for steps per second

  def write(self, step: int, scalars: dict) -> None:
    """Records `scalars` ({name: number}) at `step`; both files are flushed before returning."""
    if "step" in scalars:
      raise ValueError("'step' is reserved in metrics.jsonl; pass it as the step argument")
    if self._jsonl is None:
      return
    if any(key in scalars for key in TIMING_KEYS):
      raise ValueError(f"{', '.join(TIMING_KEYS)} are written by MetricWriter itself; rename the metric")
    values = {key: _number(key, value) for key, value in scalars.items()}
    now = time.time()
    timing = {"wall_time": round(now, 3)}
    if self._last is not None and step > self._last[0] and now > self._last[1]:
      timing["steps_per_second"] = round((step - self._last[0]) / (now - self._last[1]), 4)
    self._last = (int(step), now)
    line = json.dumps({"step": int(step), **values, **timing}) + "\n"
    os.write(self._jsonl, line.encode("utf-8"))
    speed = {"perf/steps_per_second": timing["steps_per_second"]} if "steps_per_second" in timing else {}
    for key, value in {**values, **speed}.items():
      self._tensorboard.add_scalar(key, float(value), int(step), walltime=now)
    self._tensorboard.flush()
    if not self.quiet:
      log(f"step {int(step)}: " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))


  def close(self) -> None:
    if self._jsonl is not None:
      os.close(self._jsonl)
      self._tensorboard.close()
      self._jsonl = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(workdir: str) -> list[dict]:
  """The complete lines of `workdir/metrics.jsonl` as dicts ([] when there is no file); a partial last line left
  by a killed run is skipped."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def is_time(step: int, every: int, total: int) -> bool:
  """Whether a periodic action (a log line, a checkpoint, an evaluation) is due once `step` of `total` steps are
  done: every `every` steps, and at the end."""
  return step % every == 0 or step == total


class LateFetch:
  """The host side of a training loop: a step's device metrics are kept and handed to `consume(step, metrics)`
  only after the next step has been dispatched, so the device never waits on the host's logging."""

  def __init__(self, consume):
    self.consume = consume
    self.pending = None

  def dispatched(self, step: int, metrics, keep: bool = True) -> None:
    """Step `step` was dispatched: consume the previous kept step's metrics, keep this one's if `keep`."""
    self.flush()
    if keep:
      self.pending = (step, metrics)

  def flush(self) -> None:
    """Consume the kept metrics now (before a checkpoint, an evaluation or the end)."""
    if self.pending is not None:
      pending, self.pending = self.pending, None
      self.consume(*pending)


def truncate_after(workdir: str, step: int) -> int:
  """Drops metrics.jsonl lines written after `step` (by a run killed after its last checkpoint); returns lines
  dropped. The file is rewritten atomically, so it equals an uninterrupted run's; unreadable partial lines are
  dropped. TensorBoard's files are left as they are: the resumed writer purges their later steps
  (`MetricWriter(resume_step=...)`)."""
  dropped = 0
  path = os.path.join(os.path.abspath(workdir), METRICS_FILE)
  if not processes.is_primary() or not os.path.exists(path):
    return dropped
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      keep = int(json.loads(line)["step"]) <= step
    except (ValueError, KeyError, TypeError):
      keep = False
    if keep:
      kept.append(line)
  dropped = len(lines) - len(kept)
  if dropped:
    workdir_lib.atomic_write_text(path, "".join(line + "\n" for line in kept))
  return dropped


def _fmt(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _isatty(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


class Progress:
  """A progress bar on stderr (tqdm's): count/total, rate, ETA and a postfix such as loss=0.123.

  On a terminal it redraws in place at most every `min_interval` seconds; off a terminal (a log file) it prints one
  summary line at `close`. `quiet` prints nothing. `initial` is where a resumed run starts counting.
  """

  def __init__(self, total: int | None, desc: str = "", quiet: bool = False, *, initial: int = 0,
               stream=None, min_interval: float = 0.2):
    self._stream = stream if stream is not None else sys.stderr
    self._summary = not quiet and not _isatty(self._stream)
    self._bar = tqdm.tqdm(total=total, desc=desc, initial=initial, file=self._stream, mininterval=min_interval,
                          disable=quiet or self._summary, dynamic_ncols=True)
    self.desc, self.total, self.count, self._initial = desc, total, initial, initial
    self._start = time.monotonic()
    self.postfix: dict = {}
    self._closed = False

  def update(self, n: int = 1, postfix: dict | None = None) -> None:
    """Advances by `n` and replaces the postfix when given."""
    if postfix is not None:
      self.set_postfix(**postfix)
    self.count += n
    self._bar.update(n)

  def set_postfix(self, **postfix) -> None:
    """Replaces the postfix without advancing; shown at the next redraw."""
    self.postfix = postfix
    self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    """Final line: the bar's last state on a terminal, a one-line summary otherwise; nothing when quiet."""
    if self._closed:
      return
    self._closed = True
    if self._summary:
      elapsed = time.monotonic() - self._start
      rate = (self.count - self._initial) / elapsed if elapsed > 0 else None
      line = tqdm.tqdm.format_meter(self.count, self.total, elapsed, prefix=self.desc, rate=rate,
                                    postfix=", ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items()) or None,
                                    bar_format="{desc}: {n_fmt}/{total_fmt} [{percentage:3.0f}%] {rate_fmt} in "
                                               "{elapsed}{postfix}")
      self._stream.write(line + "\n")
      self._stream.flush()
    self._bar.close()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def log(msg: str, quiet: bool = False) -> None:
  """One status line on stderr (above the progress bar, if one is drawn) unless `quiet`."""
  if not quiet:
    tqdm.tqdm.write(msg, file=sys.stderr)
