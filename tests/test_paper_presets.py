"""The `paper` presets state the paper's settings where it states them, the `recommended` presets differ from them
only in the named keys, all of them validate, and the paper's chain (grid search, best classifier, segmentation net
extended from it) runs two steps; an epoch covers every training image's area once."""
import json
import os
import re
import types

import numpy as np
import pytest

from configs import classifier as classifier_configs
from configs import grid_search as grid_configs
from configs import sweep as sweep_configs
from copper_jax import config_utils
from copper_jax.classifier import grid_search
from copper_jax.classifier import program as classifier_program
from copper_jax.data import sampler, synthetic
from copper_jax.errors import ConfigError
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import run as sweep_run

ADAM_DEFAULTS = {"optim.learning_rate": 1e-3, "optim.b1": 0.9, "optim.b2": 0.999, "optim.eps": 1e-8,
                 "optim.schedule": "constant"}
PAPER_DATA = {"data.split.train": 40, "data.split.val": 5, "data.split.test": 5, "data.synthetic.preset": "paper",
              "train.num_epochs": 200, "train.num_steps": 0}


def _flat(config):
  return config_utils.flatten(config.to_dict())


@pytest.mark.parametrize("module", [sweep_configs, classifier_configs, grid_configs])
def test_paper_presets_hold_the_papers_stated_settings(module):
  flat = _flat(module.get_config("paper"))
  for key, value in {**ADAM_DEFAULTS, **PAPER_DATA}.items():
    assert flat[key] == value, key
  assert synthetic.image_shape("paper") == (960, 1280)
  if module is sweep_configs:
    assert flat["loss.kind"] == "mse" and flat["loss.binarise_weight"] == 0.0  # eq. 4 alone
    assert flat["model_from_grid"]  # the net extended from the grid's best classifier
  if module is grid_configs:
    assert flat["grid.budget_mb"] == 12 * 1024.0  # the paper's 12 GB GPU


@pytest.mark.parametrize("module, differences", [
    (sweep_configs, {"optim.schedule", "loss.binarise_weight", "model_from_grid"}),
    (classifier_configs, {"optim.schedule"}),
    (grid_configs, {"optim.schedule"}),
])
def test_recommended_presets_differ_from_the_paper_only_where_they_say(module, differences):
  paper, recommended = _flat(module.get_config("paper")), _flat(module.get_config("recommended"))
  assert set(paper) == set(recommended)
  assert {k for k in paper if paper[k] != recommended[k] and k != "preset"} == differences


@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_paper_and_recommended_presets_lock_and_validate(preset):
  for module in (classifier_configs, grid_configs):
    config = module.get_config(preset)
    config.lock()
    classifier_program.validate_config(config)
  assert len(grid_search.grid_points(grid_configs.get_config(preset).grid)) == 36
  config = sweep_configs.get_config(preset)
  config.lock()
  assert len(sweep_program.validate_config(config)) == 8


def test_an_epoch_covers_every_training_images_area_once():
  assert sampler.patches_per_image((960, 1280), 256) == 19  # 18.75 patches of 256x256 per image, rounded up
  assert sampler.patches_per_image((64, 64), 64) == 1 and sampler.patches_per_image((64, 64), 48) == 2
  paper = classifier_configs.get_config("paper")
  per_image = sampler.patches_per_image(synthetic.image_shape("paper"), paper.train.patch_size)
  # 640 training images x 19 patches / 32 per batch = 380 steps an epoch, 76000 for the paper's 200 epochs.
  assert sampler.steps_per_epoch(16 * 40, paper.train.batch_size, per_image) == 380
  assert config_utils.total_steps(paper.train, 16 * 40, patches_per_image=per_image) == 76000
  # The sweep counts its epochs the same way.
  data = types.SimpleNamespace(num_classes=16, tau=np.linspace(0, 1, 16), stress_times=np.arange(16.0),
                               image_shape=(960, 1280))
  assert sweep_program.build(sweep_configs.get_config("paper"), data, num_train_images=16 * 40).total_steps == 76000


def _steps(config, synthetic_preset, num_labels):
  shape = synthetic.image_shape(synthetic_preset)
  return config_utils.total_steps(config.train, config.data.split.train * num_labels,
                                  patches_per_image=sampler.patches_per_image(shape, config.train.patch_size))


def test_the_presets_stated_in_epochs_kept_their_number_of_steps():
  # Their durations were restated in area epochs; the steps are those of the image-count epochs before.
  assert _steps(classifier_configs.get_config("smoke"), "tiny", 4) == 200
  assert _steps(classifier_configs.get_config("demo"), "demo", 16) == 800
  assert _steps(grid_configs.get_config("demo"), "demo", 16) == 480


def test_model_from_grid_names_what_is_missing(tmp_path):
  config = sweep_configs.get_config("paper")
  config.model_from_grid = str(tmp_path)
  with pytest.raises(ConfigError, match=r"config.model_from_grid=.*no grid.json there; run launch/grid_search.py"):
    sweep_run.model_from_grid(config, quiet=True)
  with open(tmp_path / "grid.json", "w") as f:
    json.dump({"finished": False, "points": [], "num_points": 36, "best": None}, f)
  with pytest.raises(ConfigError, match=r"unfinished \(0 of 36 points\)"):
    sweep_run.model_from_grid(config, quiet=True)
  config.model_from_grid = ""
  assert sweep_run.model_from_grid(config) is config


def _shrunk(config, data_root):
  """The preset on the tiny synthetic set for two steps: only the size of the data and of the run change."""
  config.data.root = data_root
  config.data.split = {"train": 4, "val": 1, "test": 1}
  config.train.update(num_epochs=0, num_steps=2, patch_size=32, batch_size=4, log_every=1)
  config.eval.batch_size = 2
  return config


def test_the_papers_chain_runs_two_steps_grid_then_segmentation_net_from_its_best(tmp_path):
  data_root = str(tmp_path / "tiny")
  synthetic.generate(data_root, preset="tiny")
  grid = _shrunk(grid_configs.get_config("paper"), data_root)
  grid.grid.points = ((4, 1, 1, 1),)
  grid.train.eval_every_epochs = 1
  grid.lock()
  grid_dir = str(tmp_path / "grid")
  searched = grid_search.run_grid(grid, grid_dir, quiet=True)
  assert searched["finished"] and searched["best"] == "4_1_1_1"
  with open(os.path.join(grid_dir, "points", searched["best"], "results.json")) as f:
    point = json.load(f)
  assert point["training"]["steps"] == 2 and point["model"]["dtype"] == "bfloat16"

  config = _shrunk(sweep_configs.get_config("paper"), data_root)
  config.hypotheses = ("linear", "power(gamma=0.5)")
  config.num_seeds = 1
  config.train.checkpoint_every = 2
  config.eval.update(num_overlays=1, report=False)
  config.model_from_grid = grid_dir
  config.lock()
  summary = sweep_run.run_sweep(config, str(tmp_path / "sweep"), quiet=True)
  best = next(r for r in searched["points"] if r["name"] == searched["best"])
  assert {k: summary["config"]["model"][k] for k in "cdnN"} == {k: best[k] for k in "cdnN"}
  assert summary["config"]["optim"]["schedule"] == "constant" and summary["config"]["loss"]["binarise_weight"] == 0
  with open(tmp_path / "sweep" / "config.json") as f:
    assert json.load(f)["model"]["c"] == best["c"]  # resuming and evaluation see the derived net


def test_every_row_of_docs_paper_points_at_code_and_tests_that_exist():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "docs", "paper.md"), encoding="utf-8") as f:
    table = f.read().split("## The table", 1)[1].split("\n## ", 1)[0]
  rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| **") and
          not r.startswith("| element")]
  assert len(rows) >= 30

  def defined(path, name):
    with open(path, encoding="utf-8") as f:
      text = f.read()
    return re.search(rf"^\s*(def|class) {re.escape(name)}\b", text, re.M) is not None

  for row in rows:
    element, _, code, status, tests = (cell.strip() for cell in row.strip("|").split("|"))
    assert status.split()[0].rstrip(";:,") in ("faithful", "departs", "extends", "ours", "settable"), element
    named_tests = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", tests)
    assert named_tests, f"{element}: no test named"
    last_file = None
    for file, name in named_tests:
      last_file = os.path.join(root, "tests", file)
      assert os.path.exists(last_file), f"{element}: {file}"
      assert not name or defined(last_file, name), f"{element}: {file}::{name}"
    for name in re.findall(r"`::(\w+)`", tests):  # `::name` continues the file named before it
      assert defined(last_file, name), f"{element}: ::{name}"
    for path, name in re.findall(r"`((?:copper_jax/|configs/|launch/)?[\w/]+\.py)(?:::(\w+))?", code):
      found = [p for p in (os.path.join(root, path), os.path.join(root, "copper_jax", path)) if os.path.exists(p)]
      assert found, f"{element}: {path}"
      assert not name or defined(found[0], name), f"{element}: {path}::{name}"
