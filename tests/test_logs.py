"""Metrics files (JSON lines, hand-written TensorBoard events), truncation on resume, progress bar and log."""
import glob
import io
import json
import os
import struct
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from copper_jax.store import logs
from copper_jax.store.logs import MetricWriter, Progress
from tests.reliability_helpers import text


def test_crc32c_matches_the_castagnoli_check_value():
  assert logs.crc32c(b"123456789") == 0xE3069283
  assert logs.crc32c(b"") == 0


def _events_file(workdir):
  (path,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  return path


def _write_run(workdir, steps, quiet=True):
  with MetricWriter(str(workdir), quiet=quiet) as writer:
    for step in steps:
      writer.write(step, {"loss": 1.0 / step, "val_acc": np.float32(step / 10), "epoch": np.int64(step // 2),
                          "lr": jnp.asarray(1e-3)})


def test_metric_writer_json_lines_and_tensorboard_round_trip(tmp_path):
  _write_run(tmp_path, [1, 2, 3])
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert abs(records[0].pop("wall_time") - time.time()) < 60
  assert records[0] == {"step": 1, "loss": 1.0, "val_acc": pytest.approx(0.1), "epoch": 0, "lr": pytest.approx(1e-3)}
  assert [r["step"] for r in records] == [1, 2, 3] and isinstance(records[2]["epoch"], int)
  assert all(r["steps_per_second"] > 0 for r in records[1:])

  path = _events_file(tmp_path)
  assert os.path.basename(path).startswith("events.out.tfevents.")
  events = logs.read_events(path)
  assert events[0]["file_version"] == "brain.Event:2" and events[0]["scalars"] == {}
  assert [e["step"] for e in events[1:]] == [1, 2, 3]
  speed = events[3]["scalars"].pop("perf/steps_per_second")
  assert speed == pytest.approx(records[2]["steps_per_second"], rel=1e-6)
  assert events[3]["scalars"] == pytest.approx({"loss": 1 / 3, "val_acc": 0.3, "epoch": 1.0, "lr": 1e-3})
  assert all(abs(e["wall_time"] - events[0]["wall_time"]) < 60 for e in events)


def test_event_encoding_matches_protobuf_wire_format():
  data = logs.encode_event(1.5, 300, scalars={"a": 2.0})
  value = b"\x0a\x01a" + b"\x15" + struct.pack("<f", 2.0)
  assert data == b"\x09" + struct.pack("<d", 1.5) + b"\x10\xac\x02" + b"\x2a\x0a\x0a\x08" + value
  assert logs.decode_event(logs.encode_event(0.0, -2, scalars={"n": 1.0}))["step"] == -2


def test_tensorboard_reads_the_file(tmp_path):
  # TensorBoard is in the test extra, so CI checks the hand-written events against TensorBoard's own reader.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  _write_run(tmp_path, [1, 2])
  accumulator = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  accumulator.Reload()
  assert sorted(accumulator.Tags()["scalars"]) == ["epoch", "loss", "lr", "perf/steps_per_second", "val_acc"]
  assert [(s.step, s.value) for s in accumulator.Scalars("loss")] == [(1, 1.0), (2, 0.5)]
  assert [s.step for s in accumulator.Scalars("perf/steps_per_second")] == [2]


def test_reader_stops_at_a_truncated_last_record(tmp_path):
  _write_run(tmp_path, [1, 2])
  path = _events_file(tmp_path)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-5])
  assert [e["step"] for e in logs.read_events(path)] == [0, 1]


def test_truncate_after_makes_files_equal_an_uninterrupted_run(tmp_path):
  uninterrupted, killed = tmp_path / "a", tmp_path / "b"
  _write_run(uninterrupted, [1, 2, 3, 4, 5])
  # Killed run: checkpoint at 3, metrics up to 5 and half a line; then resumed from 3.
  _write_run(killed, [1, 2, 3, 4, 5])
  with open(killed / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')
  with open(_events_file(killed), "ab") as f:
    f.write(b"\x01\x02\x03")
  assert logs.truncate_after(str(killed), 3) == 3
  assert [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
  events = logs.read_events(_events_file(killed))
  assert [e["step"] for e in events] == [0, 1, 2, 3] and events[0]["file_version"]
  assert os.path.getsize(_events_file(killed)) == sum(len(logs.frame_record(logs.encode_event(
      e["wall_time"], e["step"], file_version=e["file_version"], scalars=e["scalars"]))) for e in events)
  os.rename(_events_file(killed), _events_file(killed) + ".old")  # The resumed writer names its own file.
  _write_run(killed, [4, 5])
  assert text(str(killed), "metrics.jsonl") == text(str(uninterrupted), "metrics.jsonl")
  assert logs.truncate_after(str(killed), 10) == 0


def test_writer_ends_a_partial_line_left_by_a_killed_run(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo')
  _write_run(tmp_path, [2])
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert lines[:2] == ['{"step": 1}', '{"step": 2, "lo'] and json.loads(lines[2])["step"] == 2


def test_writer_echoes_unless_quiet_and_rejects_non_numbers(tmp_path, capsys):
  with MetricWriter(str(tmp_path)) as writer:
    writer.write(7, {"loss": 0.123456})
    with pytest.raises(TypeError, match="metric 'name'"):
      writer.write(8, {"name": "x"})
    with pytest.raises(ValueError, match="reserved"):
      writer.write(8, {"step": 1})
  assert capsys.readouterr().err == "step 7: loss=0.1235\n"


class _Tty(io.StringIO):

  def isatty(self):
    return True


def test_progress_quiet_prints_nothing():
  stream = _Tty()
  with Progress(5, "train", quiet=True, stream=stream) as bar:
    bar.update(5)
  assert stream.getvalue() == ""


def test_progress_off_a_terminal_prints_one_line_at_the_end():
  stream = io.StringIO()
  with Progress(10, "train", stream=stream) as bar:
    for _ in range(10):
      bar.update(1, postfix={"loss": 0.1234567})
    assert stream.getvalue() == ""
  (line,) = stream.getvalue().splitlines()
  assert line.startswith("train: 10/10 [100%]") and " it/s in 0:00" in line and line.endswith("loss=0.1235")


def test_progress_on_a_terminal_redraws_in_place_at_a_limited_rate():
  stream = _Tty()
  bar = Progress(1000, "eval", stream=stream, min_interval=3600)
  for _ in range(999):
    bar.update()
  assert stream.getvalue().count("\r") == 1 and "ETA" in stream.getvalue()  # Only the first update drew.
  bar.update(postfix={"acc": 0.5})  # Reaching the total always draws.
  bar.close()
  out = stream.getvalue()
  assert out.count("\r") == 3 and out.endswith("acc=0.5\x1b[K\n") and "1000/1000" in out


def test_log_prints_above_an_active_bar(capsys, monkeypatch):
  logs.log("hidden", quiet=True)
  logs.log("plain")
  assert capsys.readouterr().err == "plain\n"
  stream = _Tty()
  monkeypatch.setattr(sys, "stderr", stream)
  with Progress(3, "x", initial=1) as bar:
    bar.update()
    logs.log("note")
  out = stream.getvalue()
  assert "\r\x1b[Knote\n\rx: 2/3" in out
