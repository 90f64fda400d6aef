"""Nothing is lost: real launcher processes killed with SIGKILL at chosen moments, a diverging member, corrupt and
full disks, two processes on one workdir. Every run is compared with an uninterrupted one, byte for byte.

The runs share a persistent XLA compilation cache, so a restart takes seconds instead of recompiling; a cached
program is the same executable, and `test_same_config_and_seed_give_the_same_bytes` checks a run compiled afresh
against one that used the cache.
"""
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import sweep as sweep_configs
from copper_jax import preemption
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import run as sweep
from copper_jax.store import workdir
from tests.reliability_helpers import (HANG_S, ROOT, Launch, assert_same_arrays, checkpoint_steps,
                                       json_files_are_whole, launcher_env, metric_steps, png_claiming, saved_arrays,
                                       saving_now, strict_json, text)

# The smoke sweep with a checkpoint every 4 of its 12 steps: steps 4, 8 and 12 are saved, the last two kept.
STEPS, EVERY = 12, 4
SWEEP = ["--config=configs/sweep.py:smoke", f"--config.train.num_steps={STEPS}",
         f"--config.train.checkpoint_every={EVERY}"]
RUN_S = HANG_S  # one run to the end takes about 25 s on 2 busy cores when it compiles, 10 s from the cache
HAS_CLASSIFIER = all(os.path.exists(os.path.join(ROOT, p)) for p in ("launch/train.py", "configs/classifier.py"))
CLASSIFIER = ["--config=configs/classifier.py:smoke"]


def _run_to_end(script, args, work_dir, cache, log_name="run.log"):
  run = Launch(script, [*args, f"--workdir={work_dir}"], f"{work_dir}.{log_name}", cache)
  assert run.wait(RUN_S) == 0, run.output()
  return run


def _assert_same_checkpoints(work_dir, reference):
  """Every step the reference kept is in work_dir with the same bytes, and no save was left half-done."""
  steps, expected = checkpoint_steps(work_dir), checkpoint_steps(reference)
  assert expected and set(expected) <= set(steps), (steps, expected)
  # A kill while orbax deletes the oldest step, just after saving the last one, leaves that step half-deleted
  # until a later save; it is older than every kept step, so restore reaches a complete step first.
  assert all(s < min(expected) for s in set(steps) - set(expected)), (steps, expected)
  for step in expected:
    assert_same_arrays(saved_arrays(work_dir, step), saved_arrays(reference, step))
  assert not saving_now(work_dir)  # a killed save's temporary directory was cleaned up


def _assert_same_sweep(work_dir, reference, differing_keys=()):
  """The sweep in work_dir ended exactly as the uninterrupted reference: results, metrics, split, checkpoints.

  `differing_keys`: top-level keys of sweep.json and config.json left out of the comparison (a run with another
  setting that must not change the numbers); without them the files must be the same bytes.
  """
  for name in ("sweep.json", "config.json", "metrics.jsonl", "splits.json"):
    if differing_keys and name.endswith(".json"):
      mine, theirs = json.loads(text(work_dir, name)), json.loads(text(reference, name))
      for key in differing_keys:
        mine.pop(key, None)
        theirs.pop(key, None)
      assert mine == theirs, name
    else:
      assert text(work_dir, name) == text(reference, name), name
  assert checkpoint_steps(reference) == [STEPS - EVERY, STEPS]
  _assert_same_checkpoints(work_dir, reference)


def _kill_at(moments, script, args, work_dir, cache, random_within_s):
  """Starts `script` on work_dir once per (what, moment) and SIGKILLs it at that moment, then once more at a
  random time in its first `random_within_s` seconds (if it is still running then). After each kill no JSON file
  in the workdir may be half-written."""
  for i, (what, moment) in enumerate(moments):
    run = Launch(script, [*args, f"--workdir={work_dir}"], f"{work_dir}.{i}.log", cache)
    assert run.kill_when(moment, RUN_S), f"the run ended before the kill {what}: {run.output()}"
    json_files_are_whole(work_dir)
  run = Launch(script, [*args, f"--workdir={work_dir}"], f"{work_dir}.random.log", cache)
  if not run.kill_after(random.uniform(0.5, random_within_s)):
    assert run.proc.returncode == 0, run.output()
  json_files_are_whole(work_dir)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
  """An uninterrupted smoke sweep; the first run, so it also fills the compilation cache."""
  work_dir = str(tmp_path_factory.mktemp("reference") / "w")
  _run_to_end("sweep.py", SWEEP, work_dir, cache)
  return work_dir


@pytest.mark.slow
def test_sweep_killed_at_many_moments_resumes_to_the_same_bytes(reference, cache, tmp_path):
  work_dir = str(tmp_path / "w")
  last_checkpoint = lambda: max(checkpoint_steps(work_dir), default=0)
  moments = [
      # After metrics of a step that no checkpoint holds were written (here, before the first checkpoint): the
      # resumed run must drop and rewrite them.
      ("between checkpoints", lambda: not saving_now(work_dir) and any(
          s > last_checkpoint() and s % EVERY for s in metric_steps(work_dir))),
      # orbax is writing a step into its temporary directory.
      ("during a checkpoint write", lambda: saving_now(work_dir)),
      # Training is over and saved; evaluation, figures and report are under way.
      ("during evaluation", lambda: STEPS in checkpoint_steps(work_dir) and not os.path.exists(
          os.path.join(work_dir, "sweep.json"))),
  ]
  # The random kill comes last and may find the run already finished: nothing must change then either.
  _kill_at(moments, "sweep.py", SWEEP, work_dir, cache, random_within_s=10.0)
  _run_to_end("sweep.py", SWEEP, work_dir, cache, "final.log")
  _assert_same_sweep(work_dir, reference)


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_bytes(reference, tmp_path):
  """A second run compiled afresh, with XLA's deterministic GPU ops switched on where the config offers it (they
  change nothing on CPU): the same results, metrics and checkpoint bytes."""
  work_dir = str(tmp_path / "w")
  deterministic = "deterministic" in sweep_configs.get_config("smoke")
  flag = ["--config.deterministic=true"] if deterministic else []
  _run_to_end("sweep.py", SWEEP + flag, work_dir, cache=str(tmp_path / "fresh_cache"))
  _assert_same_sweep(work_dir, reference, ("config", "determinism", "deterministic") if deterministic else ())
  if deterministic:
    saved = strict_json(os.path.join(work_dir, "sweep.json"))
    assert saved["determinism"]["deterministic_gpu_ops"] is True and saved["determinism"]["backend"] == "cpu"


def _python(code, **env):
  """Runs `code` in a fresh Python (so JAX has not started), returning its stdout; fails on a non-zero exit."""
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(launcher_env(), **env),
                          capture_output=True, text=True, timeout=RUN_S)
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_determinism_flag_reaches_xla_and_the_record():
  record = json.loads(_python(
      "import json\n"
      "from copper_jax import determinism\n"
      "determinism.configure(True)\n"
      "import jax\n"
      "jax.numpy.zeros(2).block_until_ready()\n"
      "print(json.dumps(determinism.record()))", XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert record["deterministic_gpu_ops"] is True
  assert record["xla_flags"].split() == ["--xla_force_host_platform_device_count=2",
                                         "--xla_gpu_deterministic_ops=true"]
  assert record["device_count"] == 2  # the flags already there were kept, and XLA read them all
  assert record["backend"] == "cpu" and record["prng_impl"] and record["jax"]


def test_determinism_flag_set_too_late_is_refused():
  out = _python(
      "import jax\n"
      "from copper_jax import determinism\n"
      "jax.devices()\n"
      "determinism.configure(False)\n"
      "try:\n"
      "  determinism.configure(True)\n"
      "except RuntimeError as e:\n"
      "  print('refused:', e)\n"
      "print(determinism.record()['deterministic_gpu_ops'])", XLA_FLAGS="")
  assert out.startswith("refused:") and "before anything runs on a device" in out
  assert out.strip().endswith("False")


@pytest.mark.slow
def test_a_second_process_on_the_same_workdir_is_refused(cache, tmp_path):
  work_dir = str(tmp_path / "w")
  first = Launch("sweep.py", [*SWEEP, f"--workdir={work_dir}"], f"{work_dir}.first.log", cache)
  lock = os.path.join(work_dir, ".lock")
  holds_lock = lambda: os.path.exists(lock) and open(lock, encoding="ascii").read().strip() == str(first.proc.pid)
  try:
    deadline = time.monotonic() + RUN_S
    while not holds_lock():
      assert first.proc.poll() is None and time.monotonic() < deadline, first.output()
      time.sleep(0.05)
    second = subprocess.run(first.proc.args, cwd=ROOT, env=launcher_env(cache), capture_output=True, text=True,
                            timeout=RUN_S)
    assert first.proc.poll() is None  # the first run was not disturbed
  finally:
    first.proc.kill()
    first.wait(10)
  assert second.returncode == 2, second.stderr
  assert len(second.stderr.strip().splitlines()) == 1, second.stderr
  assert "in use by another copper_jax process" in second.stderr and str(first.proc.pid) in second.stderr


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference, cache, tmp_path):
  work_dir = str(tmp_path / "w")
  shutil.copytree(reference, work_dir)
  os.remove(os.path.join(work_dir, "sweep.json"))
  # Cut the largest array file of the latest step in half, as a crash of the storage layer might.
  arrays = glob.glob(os.path.join(work_dir, "checkpoints", str(STEPS), "state", "**", "d", "*"), recursive=True)
  largest = max(arrays, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  run = _run_to_end("sweep.py", SWEEP, work_dir, cache)
  assert f"checkpoint step {STEPS}" in run.output() and f"falling back to step {STEPS - EVERY}" in run.output()
  assert f"resuming the sweep from step {STEPS - EVERY}" in run.output()
  _assert_same_sweep(work_dir, reference)


def _mount_tmpfs(folder, size):
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], capture_output=True,
                          text=True, check=False)
  if result.returncode:
    pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {result.stderr.strip()}")


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_previous_checkpoint(reference, cache, tmp_path):
  work_dir = str(tmp_path / "w")
  checkpoints = os.path.join(work_dir, "checkpoints")
  workdir.claim(work_dir, workdir.SWEEP, "--workdir")  # the folder is the sweep's own, as if it had made it
  os.makedirs(checkpoints)
  # Room for two smoke checkpoints (about 140 kB each) but not for a third beside them.
  _mount_tmpfs(checkpoints, "300k")
  try:
    run = Launch("sweep.py", [*SWEEP, f"--workdir={work_dir}"], f"{work_dir}.full.log", cache)
    assert run.wait(RUN_S) == 2, run.output()
    last_line = run.output().strip().splitlines()[-1]
    assert last_line.startswith("error: disk full while saving checkpoint step"), last_line
    kept = checkpoint_steps(work_dir)
    assert kept and f"step {kept[-1]} is intact" in last_line
    if kept[-1] in checkpoint_steps(reference):
      assert_same_arrays(saved_arrays(work_dir, kept[-1]), saved_arrays(reference, kept[-1]))
    assert not saving_now(work_dir)  # the half-written step was removed, freeing the space
    # The user frees space and reruns the same command.
    subprocess.run(["mount", "-o", "remount,size=4m", checkpoints], check=True)
    _run_to_end("sweep.py", SWEEP, work_dir, cache)
    _assert_same_sweep(work_dir, reference)
  finally:
    subprocess.run(["umount", "-l", checkpoints], check=False)


@pytest.mark.slow
def test_a_diverging_member_is_marked_and_the_others_go_on(reference, tmp_path, monkeypatch):
  """One member's targets make its loss infinite from the first step; the sweep runs on and ranks the others.

  Tables from configs are validated, so the broken member is made through the library: `member_table` is
  patched to give member 1 (power(gamma=0.5), the only seed) targets of 1e30, whose squared error overflows.
  """
  make_table = sweep_program.member_table

  def with_a_broken_member(hyps, num_seeds, tau_T):
    table = make_table(hyps, num_seeds, tau_T)
    table["targets"] = table["targets"].copy()
    table["targets"][1] = 1e30
    return table

  monkeypatch.setattr(sweep_program, "member_table", with_a_broken_member)
  config = sweep_configs.get_config("smoke")
  config.train.num_steps, config.train.checkpoint_every = STEPS, EVERY
  config.data.root = os.path.join(reference, "data")  # the reference's images, so the others can be compared
  work_dir = str(tmp_path / "w")
  sweep.run_sweep(config, work_dir, quiet=True)

  saved, expected = strict_json(os.path.join(work_dir, "sweep.json")), strict_json(
      os.path.join(reference, "sweep.json"))
  rows = {h["name"]: h for h in saved["hypotheses"] if not h["control"]}  # controls are scored, never ranked
  broken = rows.pop("power(gamma=0.5)")
  assert broken["diverged"] is True and broken["rank"] is None and broken["diverged_seeds"] == [0]
  assert broken["loss"] == {}
  assert sorted(saved["ranking"]) == sorted(rows) and sorted(r["rank"] for r in rows.values()) == [1, 2]
  # The others trained exactly as in the reference: same batches, their own states.
  for h in expected["hypotheses"]:
    if h["name"] in rows:
      row = rows[h["name"]]
      assert row["targets"] == h["targets"] and row["mean_mask"] == h["mean_mask"] and row["iou"] == h["iou"]
      for split, loss in h["loss"].items():
        assert row["loss"][split]["per_seed"] == loss["per_seed"], (h["name"], split)
  with open(os.path.join(work_dir, "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  with open(os.path.join(reference, "metrics.jsonl"), encoding="utf-8") as f:
    reference_lines = [json.loads(line) for line in f]
  assert [line["train/diverged_members"] for line in lines] == [1] * len(reference_lines)
  for line, ref in zip(lines, reference_lines):
    for key in ("train/loss/linear/seed0", "train/loss/learned/seed0"):
      assert line[key] == ref[key], (line["step"], key)
  # The diverged member kept its last finite parameters, so the checkpoint is usable.
  assert all(np.isfinite(a).all() for a in saved_arrays(work_dir, STEPS).values() if a.dtype.kind == "f")


@pytest.fixture(scope="module")
def classifier_reference(tmp_path_factory, cache):
  if not HAS_CLASSIFIER:
    pytest.skip("launch/train.py or configs/classifier.py is missing: the classifier has not landed")
  work_dir = str(tmp_path_factory.mktemp("classifier_reference") / "w")
  _run_to_end("train.py", CLASSIFIER, work_dir, cache)
  return work_dir


def _classifier_results(work_dir):
  """results.json without the wall-clock timings, which no two runs share."""
  results = json.loads(text(work_dir, "results.json"))
  for key in ("train_time_s", "step_time_s"):
    (results.get("training") or {}).pop(key, None)
  return results


@pytest.mark.slow
def test_classifier_killed_at_many_moments_resumes_to_the_same_bytes(classifier_reference, cache, tmp_path):
  work_dir = str(tmp_path / "w")
  last_checkpoint = lambda: max(checkpoint_steps(work_dir), default=0)
  moments = [
      ("between checkpoints", lambda: not saving_now(work_dir) and any(
          s > last_checkpoint() for s in metric_steps(work_dir))),
      ("during a checkpoint write", lambda: saving_now(work_dir)),
  ]
  _kill_at(moments, "train.py", CLASSIFIER, work_dir, cache, random_within_s=8.0)
  _run_to_end("train.py", CLASSIFIER, work_dir, cache, "final.log")
  assert text(work_dir, "metrics.jsonl") == text(classifier_reference, "metrics.jsonl")
  assert _classifier_results(work_dir) == _classifier_results(classifier_reference)
  _assert_same_checkpoints(work_dir, classifier_reference)


@pytest.mark.slow
def test_classifier_stops_at_a_non_finite_loss_and_keeps_the_good_checkpoint(classifier_reference, cache,
                                                                             tmp_path):
  del classifier_reference  # only for the skip when the classifier is missing, and a warm cache
  work_dir = str(tmp_path / "w")
  # Whole-image patches, so one step per epoch and a checkpoint after each; a learning rate of 1e35 breaks step 2.
  args = [*CLASSIFIER, "--config.train.batch_size=16", "--config.train.patch_size=64",
          "--config.train.eval_every_epochs=1",
          "--config.train.num_epochs=4", "--config.optim.learning_rate=1e35", f"--workdir={work_dir}"]
  run = Launch("train.py", args, f"{work_dir}.log", cache)
  assert run.wait(RUN_S) == 2, run.output()
  last_line = run.output().strip().splitlines()[-1]
  assert "not finite at step 2" in last_line and "checkpoints up to step 1" in last_line, last_line
  assert checkpoint_steps(work_dir) == [1]
  assert all(np.isfinite(a).all() for a in saved_arrays(work_dir, 1).values() if a.dtype.kind == "f")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "launch/predict.py")), reason="launch/predict.py is missing")
def test_predict_lists_every_bad_file_and_predicts_the_good_one(reference, cache, tmp_path):
  images = tmp_path / "new_images"
  images.mkdir()
  shutil.copy(os.path.join(reference, "data", "images", "0", "img_000.png"), images / "good.png")
  bad = {"random.png": np.random.default_rng(0).bytes(3000), "zero.tif": b"", "text.tif": b"stress 2.5 h\n",
         "huge.png": png_claiming(100000, 100000)}
  for name, content in bad.items():
    (images / name).write_bytes(content)
  os.mkfifo(images / "fifo.png")
  os.symlink(images / "loop_b.png", images / "loop_a.png")
  os.symlink(images / "loop_a.png", images / "loop_b.png")
  with open(os.path.join(os.fsencode(images), b"caf\xe9.png"), "wb") as f:
    f.write((images / "good.png").read_bytes())
  out = str(tmp_path / "out")
  run = Launch("predict.py", [f"--workdir={reference}", f"--images={images}", f"--out={out}"],
               str(tmp_path / "predict.log"), cache)
  assert run.wait(RUN_S) == 0, run.output()
  assert "Traceback" not in run.output()
  with open(os.path.join(out, "skipped.txt"), encoding="utf-8") as f:
    skipped = f.read()
  for name in [*bad, "fifo.png", "loop_a.png", "loop_b.png", "caf\\xe9.png"]:
    assert name in skipped, (name, skipped)
  with open(os.path.join(out, "summary.csv"), encoding="utf-8") as f:
    rows = f.read().strip().splitlines()
  assert len(rows) == 2 and "good.png" in rows[1]



def _signal_when(run, moment, signum, timeout=RUN_S):
  """Sends `signum` to the run at the first poll where `moment()` holds, with the process stopped (SIGSTOP) while
  the moment is checked again, so the signal lands in that state; False if the run exited first."""
  deadline = time.monotonic() + timeout
  while run.proc.poll() is None:
    assert time.monotonic() < deadline, f"no signal moment within {timeout} s; log: {run.log_path}"
    if moment():
      run.proc.send_signal(signal.SIGSTOP)
      landed = moment()
      if landed:
        run.proc.send_signal(signum)
      run.proc.send_signal(signal.SIGCONT)
      if landed:
        return True
    time.sleep(0.005)
  return False


def _stopped_step(run, signal_name):
  """The step the one-line stop message names; checks the exit status and that the line is the only output
  after the progress bar."""
  last = run.output().strip().splitlines()[-1]
  assert run.proc.returncode == preemption.EXIT_STATUS, run.output()
  match = re.fullmatch(rf"stopped by {signal_name} after step (\d+) of \d+; checkpoint saved in (\S+): rerun the "
                       r"same command to resume", last)
  assert match, last
  assert "Traceback" not in run.output()
  return int(match.group(1))


@pytest.mark.slow
def test_sweep_stopped_by_sigterm_saves_its_step_and_resumes_to_the_same_bytes(reference, cache, tmp_path):
  work_dir = str(tmp_path / "w")
  run = Launch("sweep.py", [*SWEEP, f"--workdir={work_dir}"], f"{work_dir}.term.log", cache)
  # Training under way, and far enough from its end that the signal lands before the last step: metrics of
  # step 2 are written once step 3 is dispatched; step 8's only once step 9 is.
  in_training = lambda: 0 < max(metric_steps(work_dir), default=0) < STEPS - EVERY
  assert _signal_when(run, in_training, signal.SIGTERM), run.output()
  run.wait(RUN_S)
  step = _stopped_step(run, "SIGTERM")
  assert 3 <= step < STEPS and max(checkpoint_steps(work_dir)) == step  # the step in flight, saved
  assert not os.path.exists(os.path.join(work_dir, "sweep.json"))
  resumed = _run_to_end("sweep.py", SWEEP, work_dir, cache, "resumed.log")
  assert f"resuming the sweep from step {step} of {STEPS}" in resumed.output()
  _assert_same_sweep(work_dir, reference)


@pytest.mark.slow
def test_classifier_stopped_by_sigint_off_its_log_steps_resumes_to_the_same_bytes(classifier_reference, cache,
                                                                                  tmp_path):
  work_dir = str(tmp_path / "w")
  run = Launch("train.py", [*CLASSIFIER, f"--workdir={work_dir}"], f"{work_dir}.int.log", cache)
  # The smoke classifier logs every 20 steps and checkpoints every 20: stopping in between leaves sums of a
  # log line half-accumulated, which the checkpoint must carry for the resumed run to write the same line.
  total = max(metric_steps(classifier_reference))
  in_training = lambda: 0 < max(metric_steps(work_dir), default=0) < total - 40
  assert _signal_when(run, in_training, signal.SIGINT), run.output()
  run.wait(RUN_S)
  step = _stopped_step(run, "SIGINT")
  assert max(checkpoint_steps(work_dir)) == step
  _run_to_end("train.py", CLASSIFIER, work_dir, cache, "resumed.log")
  assert text(work_dir, "metrics.jsonl") == text(classifier_reference, "metrics.jsonl")
  assert _classifier_results(work_dir) == _classifier_results(classifier_reference)
  _assert_same_checkpoints(work_dir, classifier_reference)


@pytest.mark.slow
@pytest.mark.parametrize("moment, signum", [("before_training", signal.SIGINT), ("before_training", signal.SIGTERM),
                                            ("in_training", signal.SIGTERM), ("in_training", signal.SIGINT)])
def test_two_signals_at_any_moment_give_one_line_and_a_run_that_resumes_to_the_same_bytes(reference, cache, tmp_path,
                                                                                          moment, signum):
  """A user pressing Ctrl-C twice, or a scheduler sending SIGTERM twice, before training (data, compilation) or
  in it: one line, no traceback, and the same command then ends as an uninterrupted run."""
  work_dir = str(tmp_path / "w")
  run = Launch("sweep.py", [*SWEEP, f"--workdir={work_dir}"], f"{work_dir}.twice.log", cache)
  when = {"before_training": lambda: os.path.exists(os.path.join(work_dir, workdir.MARK_FILE))
          and not metric_steps(work_dir),
          "in_training": lambda: 0 < max(metric_steps(work_dir), default=0) < STEPS - EVERY}[moment]
  if not _signal_when(run, when, signum):
    pytest.skip(f"the run ended before the moment {moment}")  # a machine too fast to catch it: nothing to check
  time.sleep(0.05)
  if run.proc.poll() is None:
    run.proc.send_signal(signum)
  status = run.wait(RUN_S)
  name = signal.Signals(signum).name
  last = run.output().strip().splitlines()[-1]
  assert "Traceback" not in run.output(), run.output()
  assert status in (preemption.EXIT_STATUS, 128 + signum), run.output()
  assert last.startswith(f"stopped by {name}") and last.endswith("rerun the same command to resume"), last
  _run_to_end("sweep.py", SWEEP, work_dir, cache, "after_twice.log")
  _assert_same_sweep(work_dir, reference)
