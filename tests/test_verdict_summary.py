"""The cross-fitted verdict and `evidence_needed` as sweep.json carries them, from simulated per-image errors (no
training): a clear truth is named with nothing asked for; near-equal curves on few images are not, and the verdict
says how many images or seeds would tell them apart."""
import types

import numpy as np

from copper_jax import hypotheses, members
from copper_jax.sweep import results

NUM_LABELS = 8


def _summary(specs, per_label, noise_sd, num_seeds=2, rng_seed=0):
  """summarise() on models whose mean mask is the true fraction sqrt(tau) plus per-image and per-seed noise."""
  hyps = hypotheses.expand(specs) + hypotheses.permuted_controls(NUM_LABELS, 1, 0)
  tau_T = np.linspace(0.0, 1.0, NUM_LABELS)
  targets_KxT = hypotheses.target_table(hyps, tau_T)
  rng = np.random.default_rng(rng_seed)
  num_members = len(hyps) * num_seeds
  final_targets = np.zeros((num_members, NUM_LABELS))
  for k in range(len(hyps)):
    final_targets[members.hypothesis_members(k, num_seeds)] = targets_KxT[k]
  raw, start = {}, 0
  for split, n in (("train", 4), ("val", per_label), ("test", per_label)):
    labels_N = np.repeat(np.arange(NUM_LABELS), n)
    truth_N = np.sqrt(tau_T[labels_N]) + rng.normal(0.0, noise_sd, len(labels_N))
    fraction = truth_N[None, :] + rng.normal(0.0, noise_sd / 2, (num_members, len(labels_N)))
    raw[split] = {"index": np.arange(start, start + len(labels_N)), "label": labels_N,
                  "fraction": fraction, "target": final_targets[:, labels_N]}
    start += len(labels_N)
  dataset = types.SimpleNamespace(
      num_classes=NUM_LABELS, manifest={}, stress_times=tau_T * 10, tau=tau_T,
      label_names=[str(t) for t in range(NUM_LABELS)], root="sim", images=[None] * start,
      image_shape=(8, 8), skipped=[], specimens=None, masks=None)
  return results.summarise(raw=raw, hypotheses=hyps, num_seeds=num_seeds, final_targets=final_targets,
                           diverged=np.zeros(num_members, bool), dataset=dataset, receptive_field=24)


def test_a_clear_truth_is_named_by_both_splits_and_nothing_more_is_asked():
  summary = _summary(["linear", "power(gamma=0.5)", "power(gamma=2)"], per_label=6, noise_sd=0.02)
  assert summary["control"]["state"] == "passed", summary["control"]["text"]
  assert summary["leader"] == "power(gamma=0.5)" and summary["distinguishable"], summary["verdict"]
  assert summary["verdict"].startswith("power(gamma=0.5) fits best: chosen on the val images and confirmed on "
                                       "the test images")
  assert summary["verdict_rule"]["rule"] == "cross-fitted" and summary["verdict_rule"]["level"] == 0.975
  assert summary["evidence_needed"] == [] and "Evidence that would settle it" not in summary["verdict"]


def test_near_equal_curves_on_few_images_name_nothing_and_say_what_would():
  summary = _summary(["power(gamma=0.5)", "power(gamma=0.55)", "linear"], per_label=2, noise_sd=0.05)
  assert summary["control"]["state"] == "passed", summary["control"]["text"]
  assert not summary["distinguishable"] and summary["leader"] == summary["ranking"][0]
  rows = summary["evidence_needed"]
  assert [r["name"] for r in rows] == summary["tied_with_leader"] and rows
  row = rows[0]
  assert {"name", "units_per_label", "seeds", "have_units_per_label", "have_seeds"} <= set(row)
  assert row["have_units_per_label"] == 2 and row["have_seeds"] == 2 and row["against"] == summary["leader"]
  assert row["kind"] == "rival" and row["split"] == "val and test" and row["power"] == 0.8
  assert row["units_per_label"] is None or row["units_per_label"] > 2
  assert "Evidence that would settle it (80% power" in summary["verdict"] and row["text"] in summary["verdict"]
  assert "this run has 2 at 2 seeds" in row["text"]


def test_the_ranking_table_and_the_report_show_the_evidence_needed():
  from copper_jax.store import tables
  from copper_jax.viz import report
  summary = _summary(["power(gamma=0.5)", "power(gamma=0.55)", "linear"], per_label=2, noise_sd=0.05)
  need = summary["evidence_needed"][0]
  header, rows = tables.ranking_rows(summary)
  cells = dict(zip(header, next(row for row in rows if row[1] == need["name"])))
  assert (cells["needed_units_per_label"], cells["needed_seeds"]) == (need["units_per_label"], need["seeds"])
  assert (cells["have_units_per_label"], cells["have_seeds"]) == (2, 2)
  leader = dict(zip(header, next(row for row in rows if row[1] == summary["leader"])))
  assert leader["needed_units_per_label"] is None and leader["have_seeds"] is None
  page = report._ranking_table(summary)  # pylint: disable=protected-access
  assert "Evidence that would settle it" in page and need["text"].split(":")[0] in page
