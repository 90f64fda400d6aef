"""The main job end to end on tiny synthetic data: outputs, resume, evaluation from checkpoints, bad configs."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import sweep as sweep_configs
from copper_jax.store import logs
from copper_jax.sweep import run as sweep
from copper_jax.errors import CheckpointError, ConfigError
from tests.reliability_helpers import HANG_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**train):
  config = sweep_configs.get_config("smoke")
  config.train.update(train)
  return config


@pytest.fixture
def finished(smoke_sweep):
  return smoke_sweep


def test_outputs_of_a_finished_sweep(finished):
  work_dir, summary = finished
  for name in ("sweep.json", "report.html", "metrics.jsonl", "splits.json", "config.json",
               "figures/ranking.png", "figures/mask_vs_t.png", "figures/overlays.png", "figures/learned_g.png"):
    assert os.path.exists(os.path.join(work_dir, name)), name
  saved = json.load(open(os.path.join(work_dir, "sweep.json")))
  names = [h["name"] for h in saved["hypotheses"]]
  # The permuted-target controls follow the hypotheses; they are scored, never ranked.
  assert names == ["linear", "power(gamma=0.5)", "learned", "permuted(1)", "permuted(2)"]
  assert sorted(saved["ranking"]) == sorted(names[:3])
  assert saved["control"]["ran"] and saved["control"]["state"] in ("passed", "inconclusive", "fired")
  assert saved["evidence"]["text"] == "1 seed, 4 held-out (val) images of 4 stress times"
  for h in saved["hypotheses"]:
    lo, hi = h["loss"]["val"]["ci95"]
    assert lo <= h["loss"]["val"]["mean"] <= hi
    assert len(h["mean_mask"]["test"]) == len(saved["labels"]["stress_times"])
    assert 0.0 <= h["iou"]["test"]["mean_iou"] <= 1.0
  assert saved["receptive_field"] > 0
  assert saved["f_true"]["closest_hypothesis"] == "power(gamma=0.5)"
  learned = saved["learned_g"]["curve"]
  assert np.all(np.diff(learned) >= 0) and abs(learned[0]) < 1e-6 and abs(learned[-1] - 1) < 1e-6
  steps = [json.loads(line)["step"] for line in open(os.path.join(work_dir, "metrics.jsonl"))]
  assert steps == [2, 4, 6]
  assert saved["figures"]["loss_curves"] == "figures/loss_curves.png"
  # The CSV tables say what sweep.json says, for a spreadsheet.
  assert saved["tables"] == {"ranking": "tables/ranking.csv", "mean_masks": "tables/mean_masks.csv",
                             "learned_g": "tables/learned_g.csv"}
  read = lambda name: list(csv.DictReader(open(os.path.join(work_dir, "tables", name), newline="")))
  ranking = read("ranking.csv")
  assert [r["hypothesis"] for r in ranking if r["rank"]] == saved["ranking"]
  assert [r["hypothesis"] for r in ranking] == saved["ranking"] + [
      h["name"] for h in saved["hypotheses"] if h["name"] not in saved["ranking"]]
  for row in ranking:
    h = next(h for h in saved["hypotheses"] if h["name"] == row["hypothesis"])
    assert float(row["val_error"]) == h["loss"]["val"]["mean"]
    assert [float(row["val_error_ci95_low"]), float(row["val_error_ci95_high"])] == h["loss"]["val"]["ci95"]
    assert row["role"] == ("control" if h.get("control") else "learned" if h["learned"] else "hypothesis")
  assert {r["role"] for r in ranking} == {"hypothesis", "learned", "control"}
  masks = read("mean_masks.csv")
  assert len(masks) == len(saved["hypotheses"]) * 3 * len(saved["labels"]["stress_times"])
  first = saved["hypotheses"][0]
  assert float(masks[0]["mean_mask_on_g_scale"]) == first["mean_mask"][masks[0]["split"]][0]
  assert [float(r["learned_g"]) for r in read("learned_g.csv")] == learned


def test_evaluate_reproduces_the_training_run_exactly(finished):
  work_dir, _ = finished
  before = open(os.path.join(work_dir, "sweep.json")).read()
  checkpoints = sorted(os.listdir(os.path.join(work_dir, "checkpoints")))
  sweep.evaluate_sweep(_config(), work_dir, quiet=True)
  assert open(os.path.join(work_dir, "sweep.json")).read() == before
  assert sorted(os.listdir(os.path.join(work_dir, "checkpoints"))) == checkpoints


def test_extending_a_finished_sweep_equals_running_it_long_at_once(tmp_path):
  # A constant learning rate, so a run of 3 steps is the start of a run of 6 (a cosine schedule is not).
  constant = lambda **kw: _config(**kw).copy_and_resolve_references()
  configs = [constant(num_steps=n) for n in (3, 6, 6)]
  for c in configs:
    c.optim.schedule = "constant"
  sweep.run_sweep(configs[0], str(tmp_path / "resumed"), quiet=True)   # stops at step 3, checkpointed
  resumed = sweep.run_sweep(configs[1], str(tmp_path / "resumed"), quiet=True)  # continues to step 6
  sweep.run_sweep(configs[2], str(tmp_path / "straight"), quiet=True)
  work_dir = str(tmp_path / "straight")
  original = json.load(open(os.path.join(work_dir, "sweep.json")))
  for a, b in zip(original["hypotheses"], resumed["hypotheses"]):
    assert a["loss"] == b["loss"] and a["targets"] == b["targets"]
  # Each line without its timing keys, which no two runs share.
  by_step = lambda path: {r["step"]: {k: v for k, v in r.items() if k not in logs.TIMING_KEYS}
                          for r in map(json.loads, open(path))}
  straight, extended = by_step(os.path.join(work_dir, "metrics.jsonl")), by_step(tmp_path / "resumed" / "metrics.jsonl")
  assert all(extended[step] == line for step, line in straight.items())   # plus step 3, the first run's end


def test_checkpoint_of_another_config_is_refused_and_kept(finished):
  work_dir, _ = finished
  config = _config()
  config.model.c = 6
  with pytest.raises(CheckpointError, match="model.c"):
    sweep.evaluate_sweep(config, work_dir, quiet=True)
  assert os.path.exists(os.path.join(work_dir, "checkpoints"))


@pytest.mark.parametrize("key, value, words", [
    ("train.batch_size", 0, "train.batch_size"),
    ("num_seeds", 0, "num_seeds"),
    ("hypotheses", ("linear", "cubic"), "unknown family 'cubic'"),
    ("loss.kind", "l1", "loss.kind"),
])
def test_bad_configs_fail_before_anything_is_written(tmp_path, key, value, words):
  config = _config()
  section, _, leaf = key.rpartition(".")
  (config[section] if section else config)[leaf] = value
  with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
    sweep.run_sweep(config, str(tmp_path / "w"), quiet=True)
  assert not os.path.exists(tmp_path / "w")


def test_launcher_reports_a_misspelt_override_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch/sweep.py", "--config=configs/sweep.py:smoke", f"--workdir={tmp_path}",
       "--config.train.batch_sise=4"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)
  assert result.returncode != 0
  assert "batch_sise" in result.stderr


# Recorded from the first run of the test below (jax 0.10.2, CPU); a change means the sweep's step changed.
GOLDEN_PARAM_SUMS = [17.229340, 7.821065, 17.229340, 7.821065, 17.219341, 7.811065]


def test_golden_one_step_through_the_sweeps_own_train_step():
  """One step of the lifted, jitted program the sweep trains with: 3 hypotheses x 2 seeds on a fixed batch."""
  import types

  import jax
  import jax.numpy as jnp

  from copper_jax.sweep import program
  config = sweep_configs.get_config("smoke")
  config.hypotheses = ("linear", "power(gamma=2)", "learned")
  config.num_seeds = 2
  config.control.permutations = 0  # the controls' members are the same step on other targets
  config.model.update({"c": 4, "d": 2, "n": 1, "N": 1})
  config.train.patch_size = 16
  data = types.SimpleNamespace(num_classes=4, tau=np.linspace(0, 1, 4), stress_times=np.arange(4.0),
                               image_shape=(16, 16))
  sweep = program.build(config, data, num_train_images=8)
  states = sweep.program.init_states()
  batch = {"image": jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32)),
           "label": jnp.asarray([1, 3], jnp.int32)}
  states, metrics = sweep.program.train_step(states, sweep.member_arrays, batch)
  # The zero-initialised head starts every mask at 0.5: the loss is sum over the batch of (0.5 - g(tau))^2, with
  # the learned curve starting linear.
  linear = (0.5 - 1 / 3) ** 2 + (0.5 - 1) ** 2
  square = (0.5 - 1 / 9) ** 2 + (0.5 - 1) ** 2
  np.testing.assert_allclose(metrics["loss_sum"], [linear, linear, square, square, linear, linear], rtol=1e-6)
  sums = [float(sum(jnp.sum(p) for p in jax.tree.leaves(jax.tree.map(lambda x: x[m], states.params))))
          for m in range(6)]
  np.testing.assert_allclose(sums, GOLDEN_PARAM_SUMS, rtol=1e-5)
  assert int(states.step[0]) == 1 and not bool(states.diverged.any())
