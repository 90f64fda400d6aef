"""Metrics people expect: metrics.jsonl, TensorBoard scalars and a light progress bar, without TF or tqdm.

The TensorBoard writer hand-encodes the two protobuf messages it needs (Event, Summary.Value) and the TFRecord
framing, so training never imports TensorFlow or tensorboard.
"""
import json
import math
import os
import socket
import struct
import sys
import time

import numpy as np

from copper_jax import processes
from copper_jax.store import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"
_FILE_VERSION = "brain.Event:2"
# Keys MetricWriter adds to every metrics.jsonl line: when it was written (Unix seconds) and the training speed
# since the writer's previous line. They differ between two runs of the same numbers; compare lines without them.
TIMING_KEYS = ("wall_time", "steps_per_second")


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, bit-reversed.
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, as TFRecord framing needs."""
  crc = 0xFFFFFFFF
  table = _CRC32C_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC; masking keeps a CRC of data that itself holds CRCs from being degenerate."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative int64.
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
  """Serialised tensorflow.Event: wall_time (s), step, and either file_version or a Summary of simple_values."""
  out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode("utf-8"))
  if scalars:
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _length_delimited(5, values)
  return out


def frame_record(data: bytes) -> bytes:
  """TFRecord framing: uint64 length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def read_records(path: str) -> list[bytes]:
  """Record payloads of a TFRecord file, stopping at a truncated or corrupt record (e.g. from a killed run)."""
  with open(path, "rb") as f:
    blob = f.read()
  records, pos = [], 0
  while pos + 12 <= len(blob):
    length_bytes = blob[pos:pos + 8]
    (length,), (length_crc,) = struct.unpack("<Q", length_bytes), struct.unpack("<I", blob[pos + 8:pos + 12])
    end = pos + 12 + length + 4
    if length_crc != masked_crc32c(length_bytes) or end > len(blob):
      break
    data = blob[pos + 12:pos + 12 + length]
    if struct.unpack("<I", blob[end - 4:end])[0] != masked_crc32c(data):
      break
    records.append(data)
    pos = end
  return records


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _fields(buf: bytes):
  """(field number, wire type, value) of a protobuf message; value is int, or bytes for wire types 1, 2, 5."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      size, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + size], pos + size
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield field, wire, value


def decode_event(data: bytes) -> dict:
  """{"wall_time", "step", "file_version" (or None), "scalars": {tag: simple_value}} of a serialised Event."""
  event = {"wall_time": 0.0, "step": 0, "file_version": None, "scalars": {}}
  for field, wire, value in _fields(data):
    if field == 1 and wire == 1:
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif field == 2 and wire == 0:
      event["step"] = value - (1 << 64) if value >= 1 << 63 else value
    elif field == 3 and wire == 2:
      event["file_version"] = value.decode("utf-8")
    elif field == 5 and wire == 2:
      for v_field, _, v in _fields(value):
        if v_field != 1:
          continue
        tag, simple = None, None
        for s_field, s_wire, s in _fields(v):
          if s_field == 1 and s_wire == 2:
            tag = s.decode("utf-8")
          elif s_field == 2 and s_wire == 5:
            simple = struct.unpack("<f", s)[0]
        if tag is not None and simple is not None:
          event["scalars"][tag] = simple
  return event


def read_events(path: str) -> list[dict]:
  """Decoded events of a TensorBoard event file (see `decode_event`)."""
  return [decode_event(record) for record in read_records(path)]


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
  `truncate_after(workdir, restored_step)` before creating the writer.
  """

  def __init__(self, workdir: str, quiet: bool = False):
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
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self.events_path = os.path.join(self.workdir, TB_DIR, name)
    # Append, not truncate: a restart within the same second must not erase the earlier file.
    self._events = open(self.events_path, "ab")
    self._events.write(frame_record(encode_event(time.time(), 0, file_version=_FILE_VERSION)))
    self._events.flush()
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
    event = encode_event(now, int(step), scalars={k: float(v) for k, v in {**values, **speed}.items()})
    self._events.write(frame_record(event))
    self._events.flush()
    if not self.quiet:
      log(f"step {int(step)}: " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))


  def close(self) -> None:
    if self._jsonl is not None:
      os.close(self._jsonl)
      self._events.close()
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
  """Drops metrics written after `step` (by a run killed after its last checkpoint); returns lines dropped.

  Rewrites, atomically, metrics.jsonl keeping lines with step <= `step`, and each TensorBoard event file keeping
  events with step <= `step`, so both equal an uninterrupted run's. Unreadable partial lines/records are dropped.
  """
  workdir = os.path.abspath(workdir)
  dropped = 0
  if not processes.is_primary():
    return dropped
  path = os.path.join(workdir, METRICS_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
        keep = int(record["step"]) <= step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
      workdir_lib.atomic_write_text(path, "".join(line + "\n" for line in kept))
  tb_dir = os.path.join(workdir, TB_DIR)
  if os.path.isdir(tb_dir):
    for name in sorted(os.listdir(tb_dir)):
      if "tfevents" not in name:
        continue
      events_path = os.path.join(tb_dir, name)
      records = read_records(events_path)
      kept_records = []
      for record in records:
        event = decode_event(record)
        if event["file_version"] is not None or event["step"] <= step:
          kept_records.append(record)
      # Also rewrite when a partial record trails the readable ones (16 bytes of framing per record).
      if len(kept_records) != len(records) or os.path.getsize(events_path) != sum(len(r) + 16 for r in records):
        workdir_lib.atomic_write_bytes(events_path, b"".join(frame_record(r) for r in kept_records))
  return dropped


def _fmt(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _isatty(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


_active_bar = None  # The bar currently drawn on a terminal, so `log` can print above it.


class Progress:
  """A light progress bar on stderr: count/total, rate, ETA and a postfix such as loss=0.123.

  On a terminal it redraws in place at most every `min_interval` seconds; otherwise (or when not a terminal) it
  prints one summary line at `close`. `quiet` prints nothing. `initial` is where a resumed run starts counting.
  """

  def __init__(self, total: int | None, desc: str = "", quiet: bool = False, *, initial: int = 0,
               stream=None, min_interval: float = 0.2):
    global _active_bar
    self.total, self.desc, self.quiet = total, desc, quiet
    self.count = self._initial = initial
    self.postfix: dict = {}
    self._stream = stream if stream is not None else sys.stderr
    self._tty = not quiet and _isatty(self._stream)
    self._min_interval = min_interval
    self._start = time.monotonic()
    self._last_draw = -math.inf
    self._closed = False
    if self._tty:
      _active_bar = self

  def update(self, n: int = 1, postfix: dict | None = None) -> None:
    """Advances by `n` and replaces the postfix when given."""
    self.count += n
    if postfix is not None:
      self.postfix = dict(postfix)
    if self._tty:
      now = time.monotonic()
      if now - self._last_draw >= self._min_interval or (self.total and self.count >= self.total):
        self._draw()

  def set_postfix(self, **postfix) -> None:
    """Replaces the postfix without advancing; shown at the next redraw."""
    self.postfix = postfix

  def _line(self) -> str:
    elapsed = max(time.monotonic() - self._start, 1e-9)
    done = self.count - self._initial
    rate = done / elapsed
    parts = [f"{self.desc}: " if self.desc else ""]
    if self.total:
      parts.append(f"{self.count}/{self.total} [{100 * self.count / self.total:3.0f}%]")
    else:
      parts.append(f"{self.count}")
    parts.append(f" {rate:.3g} it/s")
    if self._closed:
      parts.append(f" in {_duration(elapsed)}")
    elif self.total and rate > 0:
      parts.append(f" ETA {_duration(max(self.total - self.count, 0) / rate)}")
    if self.postfix:
      parts.append(" " + " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items()))
    return "".join(parts)

  def _draw(self) -> None:
    self._last_draw = time.monotonic()
    self._stream.write("\r" + self._line() + "\x1b[K")
    self._stream.flush()

  def _clear(self) -> None:
    self._stream.write("\r\x1b[K")

  def close(self) -> None:
    """Final line: the bar's last state on a terminal, a one-line summary otherwise; nothing when quiet."""
    global _active_bar
    if self._closed:
      return
    self._closed = True
    if _active_bar is self:
      _active_bar = None
    if self.quiet:
      return
    prefix = "\r" if self._tty else ""
    suffix = "\x1b[K\n" if self._tty else "\n"
    self._stream.write(prefix + self._line() + suffix)
    self._stream.flush()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def log(msg: str, quiet: bool = False) -> None:
  """One status line on stderr (above the progress bar, if one is drawn) unless `quiet`."""
  if quiet:
    return
  bar = _active_bar
  if bar is not None:
    bar._clear()  # pylint: disable=protected-access
  sys.stderr.write(msg + "\n")
  sys.stderr.flush()
  if bar is not None:
    bar._draw()  # pylint: disable=protected-access
