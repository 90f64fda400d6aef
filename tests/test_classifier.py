"""The baseline classifier: presets, steps, CAM, a smoke train, resume, evaluation and its errors."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from copper_jax.classifier import program as classifier_program
from copper_jax.classifier import run as classifier
from copper_jax.store import checkpoint, workdir
from copper_jax.data import synthetic
from copper_jax.errors import CheckpointError, ConfigError
from copper_jax.data.prepare import prepare_data
from tests.reliability_helpers import HANG_S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_module(name):
  spec = importlib.util.spec_from_file_location(f"{name}_config", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def smoke_config(data_root, **train):
  config = load_config_module("classifier").get_config("smoke")
  config.data.root = data_root
  config.train.update(train)
  return config


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tiny"))
  synthetic.generate(root, preset="tiny")
  return root


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
  """The smoke preset trained once on the tiny set; tests that change the workdir work on a copy."""
  work = str(tmp_path_factory.mktemp("smoke"))
  config = smoke_config(tiny_root)
  return config, work, classifier.train_and_evaluate(config, work, quiet=True)


@pytest.mark.parametrize("name", ["classifier", "grid_search"])
def test_every_preset_loads_and_a_bad_one_names_the_choices(name):
  module = load_config_module(name)
  for preset in module.PRESETS:
    config = module.get_config(preset)
    config.lock()
    classifier_program.validate_config(config)
    with pytest.raises(AttributeError):
      config.train.num_epoch = 3  # a misspelt override fails on a locked config
  with pytest.raises(ValueError, match="unknown preset 'bogus'.*smoke, demo, paper"):
    module.get_config("bogus")


def test_bad_preset_on_the_command_line_says_so(tmp_path):
  run = subprocess.run([sys.executable, "launch/train.py", "--config=configs/classifier.py:bogus",
                        f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
  assert run.returncode != 0
  assert "unknown preset 'bogus' for configs/classifier.py; use one of smoke, demo, paper" in run.stderr


def test_validate_config_names_the_key():
  config = load_config_module("classifier").get_config("smoke")
  config.eval.checkpoint = "newest"
  with pytest.raises(ConfigError, match=r"config.eval.checkpoint='newest'"):
    classifier_program.validate_config(config)


@pytest.fixture(scope="module")
def program():
  """One compiled program shared by the step tests: the smoke net, 4 classes, batches of four 32x32 patches."""
  config = load_config_module("classifier").get_config("smoke")
  config.train.update(patch_size=32, batch_size=4)
  return classifier_program.ClassifierProgram(config, 4, 10)


def _batch(batch_size=4, size=32):
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.standard_normal((batch_size, size, size, 1)), jnp.float32),
          "label": jnp.arange(batch_size, dtype=jnp.int32) % 4}


def test_golden_one_step(program):
  # Recorded on CPU with the rbg init of seed 0. Update these numbers only when the model, its initialisation,
  # the loss or the optimizer changes on purpose; any other change in them is a bug.
  state, metrics = program.train_step(program.init_state(), _batch())
  assert float(metrics["loss_sum"]) == pytest.approx(8.775617599487305, rel=1e-5)
  assert float(metrics["grad_norm"]) == pytest.approx(5.422175407409668, rel=1e-5)
  assert float(metrics["count"]) == 4.0 and bool(metrics["finite"]) and int(state.step) == 1
  _, metrics = program.train_step(state, _batch())
  assert float(metrics["loss_sum"]) == pytest.approx(7.946306228637695, rel=1e-5)


def test_eval_step_shapes_and_padding_weight(program):
  state = program.init_state()
  batch = {**_batch(size=40), "weight": jnp.array([1.0, 1.0, 0.0, 0.0])}
  out = program.eval_step(state, batch)
  assert out["logits"].shape == (4, 4) and out["logits"].dtype == jnp.float32
  assert float(out["count"]) == 2.0


def test_cam_mean_plus_bias_is_the_logit(program):
  state = program.init_state()
  # A few steps so BatchNorm statistics and the head are not at their initial values.
  for _ in range(3):
    state, _ = program.train_step(state, _batch())
  batch = _batch(size=37)  # odd size: the poolings drop a row and a column
  logits_BxK, cam_Bxhxwxk, cam_BxHxWx2 = program.cam_step(state, batch["image"], batch["label"])
  np.testing.assert_allclose(cam_Bxhxwxk.mean(axis=(1, 2)) + state.params["head"]["bias"], logits_BxK,
                             rtol=1e-5, atol=1e-5)
  assert cam_Bxhxwxk.shape == (4, 9, 9, 4) and cam_BxHxWx2.shape == (4, 37, 37, 2)
  # The upsampled maps are those of the predicted and the true class: with the prediction as the label they agree.
  pred_B = jnp.argmax(logits_BxK, axis=-1)
  _, _, same_BxHxWx2 = program.cam_step(state, batch["image"], pred_B)
  np.testing.assert_array_equal(same_BxHxWx2[..., 0], same_BxHxWx2[..., 1])
  np.testing.assert_array_equal(same_BxHxWx2[..., 0], cam_BxHxWx2[..., 0])


def test_smoke_train_beats_chance_and_writes_results(trained):
  config, work, results = trained
  num_classes = len(results["labels"]["names"])
  assert results["splits"]["val"]["accuracy"] > 1 / num_classes
  test = results["splits"]["test"]
  assert set(test) >= {"accuracy", "confusion", "per_label_accuracy", "mae_label_steps", "spearman", "loss"}
  assert np.asarray(test["confusion"]).shape == (num_classes, num_classes)
  assert np.asarray(test["confusion"]).sum() == test["num_images"]
  assert results["model"]["depth"] == config.model.d * config.model.n * config.model.N + 1
  assert results["model"]["receptive_field"] > 0 and results["model"]["params"] > 0
  assert results["training"]["steps"] == 200 and results["training"]["train_time_s"] > 0
  for name in ("config.json", "results.json", "confusion.png", "per_label.png", "metrics.jsonl"):
    assert os.path.exists(os.path.join(work, name)), name
  assert len(os.listdir(os.path.join(work, "cam"))) == config.eval.num_cam
  with open(os.path.join(work, "metrics.jsonl"), encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [r["step"] for r in lines if "val/accuracy" in r] == [40, 80, 120, 160, 200]


def _snapshot(directory):
  return {os.path.relpath(os.path.join(d, f), directory): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(directory) for f in files}


def test_evaluate_rewrites_the_same_results_without_touching_checkpoints(trained):
  config, work, _ = trained
  before = {name: open(os.path.join(work, name), "rb").read()
            for name in ("results.json", "confusion.png", "per_label.png")}
  checkpoints = _snapshot(os.path.join(work, "checkpoints"))
  saved = workdir.load_config(work)
  classifier.evaluate_classifier(saved, work, quiet=True)
  for name, content in before.items():
    assert open(os.path.join(work, name), "rb").read() == content, name
  assert _snapshot(os.path.join(work, "checkpoints")) == checkpoints


def test_a_checkpoint_of_another_architecture_is_refused(trained, tmp_path):
  _, work, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(work, copy, ignore=shutil.ignore_patterns(".lock"))
  with open(os.path.join(copy, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  saved["model"]["c"] = 16
  workdir.atomic_write_json(os.path.join(copy, "config.json"), saved)
  with pytest.raises(CheckpointError, match=r"model\.c saved 8 vs now 16") as error:
    classifier.evaluate_classifier(workdir.load_config(copy), copy, quiet=True)
  assert "\n" not in str(error.value)
  run = subprocess.run([sys.executable, "launch/evaluate.py", f"--workdir={copy}"], cwd=REPO,
                       capture_output=True, text=True, timeout=HANG_S, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 2
  error_lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1 and "model.c saved 8 vs now 16" in error_lines[0]


def test_training_another_architecture_in_a_used_workdir_fails(trained, tmp_path):
  config, work, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(work, copy, ignore=shutil.ignore_patterns(".lock"))
  other = smoke_config(config.data.root)
  other.model.c = 4
  with pytest.raises(ConfigError, match=r"model\.c 8 -> 4.*fresh --workdir"):
    classifier.train_and_evaluate(other, copy, quiet=True)


def _train_only(config, work):
  dataset, split = prepare_data(config, work)
  total = config.train.num_steps
  program = classifier_program.ClassifierProgram(config, dataset.num_classes, total)
  classifier.train(config, work, dataset, split, program, quiet=True)
  state, _ = classifier_program.restore_for_eval(config, work, dataset, len(split["val"]) > 0, program, "latest")
  return state


def test_resume_continues_exactly(tiny_root, tmp_path):
  straight = _train_only(smoke_config(tiny_root, num_epochs=0, num_steps=8), str(tmp_path / "straight"))
  _train_only(smoke_config(tiny_root, num_epochs=0, num_steps=4), str(tmp_path / "resumed"))
  resumed = _train_only(smoke_config(tiny_root, num_epochs=0, num_steps=8), str(tmp_path / "resumed"))
  assert int(resumed.step) == 8
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_non_finite_loss_stops_at_its_step_and_keeps_the_good_checkpoint(tiny_root, tmp_path):
  # 16 whole 64x64 training images in one batch: one step per epoch, a checkpoint after step 1; lr 1e35 breaks
  # step 2.
  config = smoke_config(tiny_root, num_epochs=0, num_steps=4, batch_size=16, eval_every_epochs=1, patch_size=64)
  config.optim.learning_rate = 1e35
  work = str(tmp_path / "nan")
  with pytest.raises(classifier.NonFiniteLossError, match="not finite at step 2.*checkpoints up to step 1"):
    classifier.train_and_evaluate(config, work, quiet=True)
  ckpt = checkpoint.Checkpointer(os.path.join(work, "checkpoints"))
  assert ckpt.all_steps() == [1]
  ckpt.close()


@pytest.mark.slow
def test_launchers_two_steps_end_to_end(tiny_root, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  short = ["--config.train.num_epochs=0", "--config.train.num_steps=2", f"--config.data.root={tiny_root}"]
  work = str(tmp_path / "clf")
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                                     timeout=300, env=env)
  train = run("launch/train.py", "--config=configs/classifier.py:smoke", f"--workdir={work}", "--quiet", *short)
  assert train.returncode == 0, train.stderr
  assert train.stdout.startswith("test: accuracy")
  evaluate = run("launch/evaluate.py", f"--workdir={work}", "--split=val", "--cam=1", "--quiet")
  assert evaluate.returncode == 0, evaluate.stderr
  assert evaluate.stdout.startswith("val: accuracy") and len(os.listdir(os.path.join(work, "cam"))) == 1
  grid = run("launch/grid_search.py", "--config=configs/grid_search.py:smoke", f"--workdir={tmp_path / 'grid'}",
             "--quiet", *short)
  assert grid.returncode == 0, grid.stderr
  assert "best of 1 trained points: 8_2_1_1" in grid.stdout
