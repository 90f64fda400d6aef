"""One sweep in two processes on this machine (jax.distributed on CPU: a localhost coordinator, gloo collectives),
its members split over both: the same workdir as one process leaves, a SIGTERM to one process stopping both at
one step, a SIGKILL of one process, and restarts of both resuming to the same bytes."""
import json
import os
import signal
import socket
import time

import pytest

from copper_jax import preemption
from tests.reliability_helpers import HANG_S, Launch, checkpoint_steps, metric_steps, text

# 3 hypotheses x 2 seeds: 6 members, 3 on each process's one CPU device.
SWEEP = ["--config=configs/sweep.py:smoke", "--config.num_seeds=2", "--config.train.num_steps=12",
         "--config.train.checkpoint_every=4", "--quiet"]
LONG = ["--config=configs/sweep.py:smoke", "--config.num_seeds=2", "--config.train.num_steps=150",
        "--config.train.checkpoint_every=50", "--config.train.log_every=5", "--quiet"]
RUN_S = HANG_S
HEARTBEAT_S = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _pair(args, work_dir, cache, tag):
  port = _free_port()
  return [Launch("sweep.py", [*args, f"--workdir={work_dir}", "--distributed",
                              f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                              f"--heartbeat_timeout_s={HEARTBEAT_S}"], f"{work_dir}.{tag}{i}.log", cache)
          for i in range(2)]


def _wait_all(runs):
  return [run.wait(RUN_S) for run in runs]


def _one_process(args, work_dir, cache):
  run = Launch("sweep.py", [*args, f"--workdir={work_dir}"], f"{work_dir}.log", cache)
  assert run.wait(RUN_S) == 0, run.output()


def _manifest(work_dir, step):
  """Path, shape, dtype and CRC-32 of every saved leaf (copper_jax.store.checkpoint writes it with each step)."""
  with open(os.path.join(work_dir, "checkpoints", str(step), "manifest", "metadata"), encoding="utf-8") as f:
    return json.load(f)


def _assert_same_as_one_process(work_dir, reference):
  for name in ("metrics.jsonl", "splits.json", "config.json", "data_summary.json"):
    assert text(work_dir, name) == text(reference, name), name
  mine, theirs = json.loads(text(work_dir, "sweep.json")), json.loads(text(reference, "sweep.json"))
  # The one honest difference: the record of how many devices ran it.
  assert (mine["determinism"].pop("device_count"), theirs["determinism"].pop("device_count")) == (2, 1)
  assert mine == theirs
  assert checkpoint_steps(work_dir) == checkpoint_steps(reference)
  for step in checkpoint_steps(reference):
    assert _manifest(work_dir, step) == _manifest(reference, step), step


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.mark.slow
def test_two_processes_split_the_members_and_leave_the_workdir_one_process_leaves(tmp_path, cache):
  reference, work_dir = str(tmp_path / "one"), str(tmp_path / "two")
  _one_process(SWEEP, reference, cache)
  runs = _pair(SWEEP, work_dir, cache, "p")
  assert _wait_all(runs) == [0, 0], [run.output()[-2000:] for run in runs]
  _assert_same_as_one_process(work_dir, reference)
  # Each process wrote its own members' arrays into the one checkpoint.
  state_dir = os.path.join(work_dir, "checkpoints", "12", "state")
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))
  # One process restores what two saved (orbax would place the arrays on the saving devices unless told).
  os.remove(os.path.join(work_dir, "sweep.json"))
  run = Launch("evaluate.py", [f"--workdir={work_dir}"], f"{work_dir}.evaluate.log", cache)
  assert run.wait(RUN_S) == 0, run.output()
  assert json.loads(text(work_dir, "sweep.json")) == json.loads(text(reference, "sweep.json"))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_sigkill_leaves_a_restartable_job(tmp_path, cache):
  reference, work_dir = str(tmp_path / "one"), str(tmp_path / "two")
  _one_process(LONG, reference, cache)

  runs = _pair(LONG, work_dir, cache, "term")
  deadline = time.monotonic() + RUN_S
  while max(metric_steps(work_dir), default=0) < 10:
    assert time.monotonic() < deadline and all(r.proc.poll() is None for r in runs), runs[0].output()
    time.sleep(0.05)
  runs[1].proc.send_signal(signal.SIGTERM)  # to the second process alone: JAX's preemption service tells the first
  assert _wait_all(runs) == [preemption.EXIT_STATUS] * 2, [run.output()[-2000:] for run in runs]
  lines = [run.output().strip().splitlines()[-1] for run in runs]
  assert lines[0] == lines[1] and lines[0].startswith("stopped by SIGTERM after step "), lines
  stopped = int(lines[0].split()[5])
  assert max(checkpoint_steps(work_dir)) == stopped < 150

  # A process killed without warning: the other waits in its next collective until the heartbeat times out, then
  # aborts; neither writes anything after the last checkpoint.
  runs = _pair(LONG, work_dir, cache, "kill")
  deadline = time.monotonic() + RUN_S
  while max(metric_steps(work_dir), default=0) < stopped + 10:
    assert time.monotonic() < deadline and all(r.proc.poll() is None for r in runs), runs[0].output()
    time.sleep(0.05)
  killed_at = time.monotonic()
  runs[1].proc.send_signal(signal.SIGKILL)
  status = runs[0].wait(RUN_S)
  waited_s = time.monotonic() - killed_at
  runs[1].wait(10)
  print(f"\nthe surviving process exited with status {status} after {waited_s:.0f} s")
  # It gave up because of the heartbeat, not for ever (how soon depends on the machine's load, so no bound here).
  assert status != 0 and "heartbeat timeout" in runs[0].output(), runs[0].output()[-2000:]

  runs = _pair(LONG, work_dir, cache, "resumed")
  assert _wait_all(runs) == [0, 0], [run.output()[-2000:] for run in runs]
  _assert_same_as_one_process(work_dir, reference)


@pytest.mark.parametrize("flags, words", [
    ({}, "needs --coordinator_address=HOST:PORT"),
    ({"coordinator_address": "localhost"}, "give HOST:PORT"),
    ({"coordinator_address": "localhost:99999", "num_processes": 2, "process_id": 0}, "port in 1..65535"),
    ({"coordinator_address": "localhost:1234"}, "needs --num_processes and --process_id"),
    ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 2}, "0 <= process_id < "),
    ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": -1}, "0 <= process_id < "),
    ({"coordinator_address": "localhost:1234", "num_processes": 0, "process_id": 0}, "at least 1 process"),
])
def test_distributed_flags_are_checked_before_joining(flags, words, monkeypatch):
  from copper_jax import processes
  from copper_jax.errors import UserError
  for variable in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(variable, raising=False)
  with pytest.raises(UserError) as error:
    processes.join_from_flags(True, **flags)
  assert words in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(UserError, match="only apply with --distributed"):
    processes.join_from_flags(False, coordinator_address="localhost:1234")


def test_a_process_whose_partner_never_starts_says_what_it_waits_for_and_gives_up(tmp_path, cache):
  work_dir = str(tmp_path / "w")
  run = Launch("sweep.py", [*SWEEP, f"--workdir={work_dir}", "--distributed", f"--coordinator_address=localhost:"
                            f"{_free_port()}", "--num_processes=2", "--process_id=0", "--join_timeout_s=5"],
               f"{work_dir}.log", cache)
  assert run.wait(RUN_S) == 2, run.output()
  lines = run.output().strip().splitlines()
  assert any("process 0 of 2: waiting up to 5 s for every process of the job to join" in line for line in lines)
  assert lines[-1].startswith("error: process 0 of 2 gave up after 5 s") and "Traceback" not in run.output()
  assert not os.path.exists(work_dir)  # nothing was written
