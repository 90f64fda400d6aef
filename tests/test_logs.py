"""Metrics files (JSON lines, TensorBoard events read back by TensorBoard), truncation on resume, progress bar and log."""
import glob
import io
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from copper_jax.store import logs
from copper_jax.store.logs import MetricWriter, Progress
from tests.reliability_helpers import text


def _events_files(workdir):
  return sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))


def _scalars(workdir, tag):
  # TensorBoard is in the test extra: the event files are read back by TensorBoard's own reader, which applies
  # the purge a resumed writer records.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  accumulator.Reload()
  return accumulator, [(s.step, s.value) for s in accumulator.Scalars(tag)]


def _write_run(workdir, steps, quiet=True, resume_step=0):
  with MetricWriter(str(workdir), quiet=quiet, resume_step=resume_step) as writer:
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

  (path,) = _events_files(tmp_path)
  assert os.path.basename(path).startswith("events.out.tfevents.")
  accumulator, loss = _scalars(str(tmp_path), "loss")
  assert sorted(accumulator.Tags()["scalars"]) == ["epoch", "loss", "lr", "perf/steps_per_second", "val_acc"]
  assert loss == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
  (speed,) = [s for s in accumulator.Scalars("perf/steps_per_second") if s.step == 3]
  assert speed.value == pytest.approx(records[2]["steps_per_second"], rel=1e-6)
  assert [s.step for s in accumulator.Scalars("perf/steps_per_second")] == [2, 3]
  assert all(abs(s.wall_time - time.time()) < 60 for s in accumulator.Scalars("epoch"))


def test_truncate_after_makes_files_equal_an_uninterrupted_run(tmp_path):
  uninterrupted, killed = tmp_path / "a", tmp_path / "b"
  _write_run(uninterrupted, [1, 2, 3, 4, 5])
  # Killed run: checkpoint at 3, metrics up to 5 and half a line; then resumed from 3.
  _write_run(killed, [1, 2, 3, 4, 5])
  with open(killed / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')
  assert logs.truncate_after(str(killed), 3) == 3
  assert [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
  _write_run(killed, [4, 5], resume_step=3)
  assert text(str(killed), "metrics.jsonl") == text(str(uninterrupted), "metrics.jsonl")
  assert logs.truncate_after(str(killed), 10) == 0
  # TensorBoard shows each step once, the resumed run's after the checkpoint.
  assert len(_events_files(killed)) == 2
  assert _scalars(str(killed), "loss")[1] == _scalars(str(uninterrupted), "loss")[1]


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
  assert line.startswith("train: 10/10 [100%]") and "it/s in 00:00" in line and line.endswith("loss=0.1235")


def test_progress_on_a_terminal_redraws_in_place_at_a_limited_rate():
  stream = _Tty()
  bar = Progress(1000, "eval", stream=stream, min_interval=3600)
  for _ in range(999):
    bar.update()
  assert stream.getvalue().count("\r") <= 2  # drawn when opened, then held back by min_interval
  bar.update(postfix={"acc": 0.5})
  bar.close()
  last = stream.getvalue().split("\r")[-1]
  assert "1000/1000" in last and "acc=0.5" in last


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
  assert "note\n" in out and out.rindex("x:") > out.index("note")  # the bar is drawn again below the line
