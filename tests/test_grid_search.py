"""The classifier's grid search: points, the memory budget, the table, and resuming."""
import csv
import importlib.util
import json
import os

import ml_collections
import pytest

from copper_jax.classifier import grid_search
from copper_jax.data import synthetic
from copper_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def grid_config(preset="smoke"):
  spec = importlib.util.spec_from_file_location("grid_config", os.path.join(REPO, "configs", "grid_search.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def test_points_are_the_product_or_the_explicit_list():
  grid = ml_collections.ConfigDict({"c": (8, 16), "d": (2,), "n": (1, 2), "N": (1,), "points": ()})
  assert grid_search.grid_points(grid) == [(8, 2, 1, 1), (8, 2, 2, 1), (16, 2, 1, 1), (16, 2, 2, 1)]
  grid.points = ((4, 1, 1, 1), (4, 1, 1, 1), (8, 2, 1, 1))
  assert grid_search.grid_points(grid) == [(4, 1, 1, 1), (8, 2, 1, 1)]
  grid.points = ((4, 1, 1),)
  with pytest.raises(ConfigError, match=r"config.grid.points has the point \(4, 1, 1\)"):
    grid_search.grid_points(grid)


def test_two_point_search_skips_the_point_over_budget_and_resumes(tmp_path):
  data_root = str(tmp_path / "tiny")
  synthetic.generate(data_root, preset="tiny")
  config = grid_config("smoke")
  config.data.root = data_root
  config.train.num_epochs = 10  # the table is what is tested here, not the accuracy
  config.eval.num_cam = 0
  work = str(tmp_path / "grid")
  grid = grid_search.run_grid(config, work, quiet=True)

  by_status = {r["status"]: r for r in grid["points"]}
  assert set(by_status) == {"trained", "skipped"}
  trained, skipped = by_status["trained"], by_status["skipped"]
  assert (trained["c"], trained["d"], trained["n"], trained["N"]) == (8, 2, 1, 1)
  assert grid["best"] == "8_2_1_1" and trained["rank"] == 1
  assert trained["peak_memory_mb"] <= config.grid.budget_mb < skipped["peak_memory_mb"]
  assert "grid.budget_mb=20" in skipped["reason"]
  assert trained["step_time_ms"] > 0 and trained["params"] > 0 and trained["receptive_field"] > 0
  assert not os.path.exists(os.path.join(work, "points", skipped["name"]))
  assert os.path.exists(os.path.join(work, "points", "8_2_1_1", "results.json"))

  markdown = open(os.path.join(work, "grid.md"), encoding="utf-8").read()
  assert "**Best: 8_2_1_1**" in markdown and "## Skipped" in markdown and skipped["reason"] in markdown
  with open(os.path.join(work, "grid.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["trained", "skipped"]

  # A second run finds the point finished: nothing is trained again and the outputs are the same.
  results = os.path.join(work, "points", "8_2_1_1", "results.json")
  mtime = os.stat(results).st_mtime_ns
  assert grid_search.run_grid(config, work, quiet=True) == json.loads(json.dumps(grid))
  assert os.stat(results).st_mtime_ns == mtime


def test_changing_shared_settings_of_a_search_is_refused(tmp_path):
  data_root = str(tmp_path / "tiny")
  synthetic.generate(data_root, preset="tiny")
  config = grid_config("smoke")
  config.data.root = data_root
  config.grid.points = ((8, 2, 1, 1),)
  config.grid.budget_mb = 0.001  # over budget: only the table is written
  work = str(tmp_path / "grid")
  grid = grid_search.run_grid(config, work, quiet=True)
  assert grid["best"] is None and all(r["status"] == "skipped" for r in grid["points"])
  config.seed = 1
  with pytest.raises(ConfigError, match=r"seed 0 -> 1"):
    grid_search.run_grid(config, work, quiet=True)
