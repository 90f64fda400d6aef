"""The segmentation net chosen by the data (copper_jax/model_search.py): candidates, the rule, and a tiny search."""
import json
import os

import pytest

from configs import sweep as sweep_configs
from copper_jax.errors import ConfigError
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import run as sweep_run
from copper_jax import model_search as search


def _row(name, rf, control, error):
  return {"name": name, "receptive_field": rf, "status": "trained", "control": control, "best_error": error,
          "best_hypothesis": "linear", "error_split": "val"}


def test_the_rule_keeps_passed_controls_and_takes_the_lowest_error():
  config = sweep_configs.get_config("textures")
  rows = [_row("small", 10, "passed", 0.05), _row("mid", 24, "passed", 0.01), _row("large", 56, "fired", 0.001),
          _row("unsure", 38, "inconclusive", 0.002)]
  table = search._table(config, rows)
  # the large field fits best because it reads t from elsewhere: its control fired, so it is not a candidate
  assert table["chosen"] == "mid" and [r["kept"] for r in rows] == [True, True, False, False]
  assert "lowest val error" in table["reason"]
  tie = search._table(config, [_row("b", 38, "passed", 0.01), _row("a", 24, "passed", 0.01)])
  assert tie["chosen"] == "a"  # the smaller receptive field on a tie
  assert search._table(config, [_row("large", 56, "fired", 0.001)])["chosen"] is None
  markdown = search.markdown(search._table(config, [dict(_row("s", 10, "passed", 0.05), train_steps=5,
                                                         patch_size=64, batch_size=8,
                                                         control_share=0.1, control_ci95=[0.0, 0.2], control_bar=0.25,
                                                         best_mean_iou=0.8, local_std_mean_iou=0.6)]))
  assert ("| s | 10 | 64 x 8 | 5 | passed | 0.10 [0.00, 0.20] | 0.25 | linear | 0.05000 | 0.800 | 0.600 | yes |"
          in markdown)


@pytest.mark.parametrize("preset, image_shape, expected", [
    # fields 24, 56, 112, 224 px: the configured 64 px patch holds the first two; the others get the smallest
    # multiple of 2**d holding their field, at most what the images allow, with about the same pixels per step
    ("textures", (128, 128), [(64, 8), (64, 8), (112, 3), (128, 2)]),
    ("demo", (256, 256), [(64, 16), (64, 16), (112, 5), (224, 1)]),
    ("demo", (200, 300), [(64, 16), (64, 16), (112, 5), (192, 2)]),
])
def test_each_candidate_trains_on_patches_that_hold_its_receptive_field(preset, image_shape, expected):
  config = sweep_configs.get_config(preset)
  points = [(8, 2, 1, 1), (8, 3, 1, 1), (8, 4, 1, 1), (8, 5, 1, 1)]
  assert [search.candidate_patch(config, p, image_shape) for p in points] == expected
  cfg = search.candidate_config(config, points[2], "/data", image_shape)
  assert (cfg.model.d, cfg.train.patch_size, cfg.train.batch_size) == (4, *expected[2])
  assert (config.train.patch_size, config.model.d) == (sweep_configs.get_config(preset).train.patch_size, 2)


@pytest.mark.parametrize("points, words", [
    ((), "give at least one"),
    (((8, 2, 1),), "four whole numbers"),
    (((8, 0, 1, 1),), "four whole numbers"),
    (((8, 7, 1, 1),), "train.patch_size >= 128"),
])
def test_bad_candidates_are_named(points, words):
  config = sweep_configs.get_config("textures")
  config.model.search.enabled = True
  config.model.search.points = points
  with pytest.raises(ConfigError, match=f"config.model.search.points.*{words}"):
    sweep_program.validate_config(config)


def test_search_and_model_from_grid_cannot_both_choose_the_net(tmp_path):
  config = sweep_configs.get_config("smoke")
  config.model.search.enabled = True
  config.model_from_grid = str(tmp_path / "grid")
  with pytest.raises(ConfigError, match="set one of them"):
    sweep_run.run_sweep(config, str(tmp_path / "w"), quiet=True)
  assert not os.path.exists(tmp_path / "w")


def test_a_search_without_controls_is_refused_before_training(tmp_path):
  config = sweep_configs.get_config("smoke")
  config.model.search.enabled = True
  config.control.permutations = 0
  with pytest.raises(ConfigError, match="control.permutations"):
    search.search_then_sweep(config, str(tmp_path), quiet=True)
  assert not os.path.exists(tmp_path / "search")


@pytest.mark.slow
def test_a_tiny_search_chooses_trains_once_and_reports(tmp_path):
  config = sweep_configs.get_config("smoke")
  config.data.synthetic.images_per_label = 8
  config.data.split.update({"train": 4, "val": 2, "test": 2})
  config.model.search.enabled = True
  config.model.search.points = ((4, 1, 1, 1), (4, 2, 1, 1))
  config.train.patch_size = 16  # the second candidate's 24 px field does not fit: it trains on 24 px patches
  summary = search.search_then_sweep(config, str(tmp_path), quiet=True)

  with open(tmp_path / "search.json") as f:
    table = json.load(f)
  assert [r["name"] for r in table["points"]] == ["4_1_1_1", "4_2_1_1"]
  assert {r["receptive_field"] for r in table["points"]} == {10, 24}
  assert [(r["patch_size"], r["batch_size"]) for r in table["points"]] == [(16, 4), (24, 2)]
  with open(tmp_path / "search" / "4_2_1_1" / "config.json") as f:
    assert json.load(f)["train"]["patch_size"] == 24
  chosen = next(r for r in table["points"] if r["name"] == table["chosen"])
  assert chosen["kept"] and chosen["control"] == "passed"
  assert summary["model_search"]["chosen"] == table["chosen"]
  assert [summary["config"]["model"][k] for k in "cdnN"] == [chosen[k] for k in "cdnN"]
  assert [summary["config"]["train"][k] for k in ("patch_size", "batch_size")] == [chosen["patch_size"],
                                                                                  chosen["batch_size"]]
  assert (tmp_path / "search.md").read_text().count("| 4_") == 2
  # the sweep adopted the chosen candidate's training: the same states give the same held-out errors
  with open(tmp_path / "search" / table["chosen"] / "sweep.json") as f:
    candidate = json.load(f)
  assert [h["loss"]["val"]["mean"] for h in summary["hypotheses"]] == [
      h["loss"]["val"]["mean"] for h in candidate["hypotheses"]]
  assert summary["receptive_field"] == chosen["receptive_field"]
  quality = summary["mask_quality"]
  assert quality["split"] == "test" and quality["num_images"] == 8
  assert set(quality["mean_iou"]["linear"]) == {"single", "flips", "seed_ensemble", "flips_and_seeds"}
  assert 0 <= quality["local_std_filter"]["mean_iou"] <= 1
  assert "Segmentation net chosen by the data" in (tmp_path / "report.html").read_text()


def test_the_textures_preset_validates_with_every_texture_and_its_candidates():
  from copper_jax.data import prepare, synthetic
  from copper_jax.sweep import program
  for texture in synthetic.TEXTURES:
    config = sweep_configs.get_config("textures")
    config.data.synthetic.texture = texture
    config.lock()
    program.validate_config(config)
    prepare.check_patch_fits(config)
    assert [search.candidate_name(p) for p in search.candidates(config)] == ["8_2_1_1", "8_3_1_1", "8_4_1_1"]
  config = sweep_configs.get_config("textures")
  config.data.synthetic.texture = "wood"
  with pytest.raises(ConfigError, match="texture='wood' is unknown"):
    prepare.check_patch_fits(config)
  # the default search grid: c=8 with receptive fields 24, 56 and 112 px
  from copper_jax.models import analysis
  default = sweep_configs.get_config("demo")
  assert [analysis.receptive_field("segmentation", *p) for p in search.candidates(default)] == [24, 56, 112]
