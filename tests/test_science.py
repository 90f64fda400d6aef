"""The method itself, on synthetic data with a known answer (docs/science.md).

With the true f among well separated rivals and a local model (small receptive field), the sweep must rank the
true f first with its interval clear of the others, and its masks must localise the smoothed regions far
better than a constant mask. Slow (about a minute on 2 cores): it trains 10 models for 250 steps.
"""
import pytest

from configs import sweep as sweep_configs
from copper_jax.sweep import run as sweep


@pytest.mark.slow
def test_true_hypothesis_ranks_first_and_masks_localise(tmp_path):
  config = sweep_configs.get_config("science")
  summary = sweep.run_sweep(config, str(tmp_path), quiet=True)

  assert summary["control"]["state"] == "passed", summary["control"]["text"]
  assert summary["f_true"]["closest_hypothesis"] == "linear" and summary["f_true"]["closest_ranked_first"]
  assert summary["ranking"][0] == "linear", summary["ranking"]
  assert summary["leader"] == "linear" and summary["distinguishable"], summary["verdict"]
  rivals = [h for h in summary["hypotheses"] if h["name"] != "linear" and not h["control"]]
  assert all(h["excess_over_leader"]["ci95"][0] > 0 for h in rivals)
  assert summary["verdict"].startswith("linear fits best")

  leader = next(h for h in summary["hypotheses"] if h["name"] == "linear")
  constant = summary["iou_all_smoothed_baseline"]["mean_iou"]
  assert leader["iou"]["test"]["mean_iou"] > constant + 0.3
  assert leader["iou"]["test"]["rough"] > 0.6 and leader["iou"]["test"]["smoothed"] > 0.6
  assert summary["receptive_field"] < min(summary["data"]["image_shape"]) / 4


@pytest.mark.slow
@pytest.mark.parametrize("bend", ["confounded", "drift"])
def test_the_permuted_target_control_fires_when_t_is_read_from_another_cue(tmp_path, bend):
  """The same small set, bent: stress time carried by blur alone (the area never changes), or a brightness and focus
  drift with t on top of the real area change. The model can then fit scrambled targets, and the verdict must say
  so and name no hypothesis, with no manifest telling it anything."""
  config = sweep_configs.get_config("science")
  if bend == "confounded":
    config.data.synthetic.confounded = True
  else:
    config.data.synthetic.update(drift_brightness=0.3, drift_blur=1.0)
  summary = sweep.run_sweep(config, str(tmp_path), quiet=True)
  # Measured at this size (250 steps): the drifting set fits the tent control to 87% [84%, 90%] (fired); on the
  # blur-confounded one the tent reached 11% [-29%, 51%] against a bar of 39% (inconclusive). Either way the
  # verdict must not name a hypothesis.
  expected = ("fired",) if bend == "drift" else ("fired", "inconclusive")
  assert summary["control"]["state"] in expected, summary["control"]["text"]
  assert summary["leader"] is None and "no hypothesis is named" in summary["verdict"]
