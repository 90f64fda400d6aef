"""From per-member, per-image evaluation arrays to the sweep's ranking, intervals and verdict: numpy in, dict out.

Ranking measure: held-out proportion MSE, (mean mask - g(t))^2 per image, whatever loss trained the models, so
hypotheses are compared on the paper's scale. Intervals: 95% percentile bootstrap that resamples both the seeds
and the images, so they hold the two sources of noise a user would meet on a rerun with new data.
"""
import numpy as np

from copper_jax import hypotheses as hypotheses_lib
from copper_jax import members

SPLITS = ("train", "val", "test")

WHAT_THE_MASK_IS = (
    "The mask marks surface the model judges smoothed (low adhesion) from SEM secondary-electron intensity and "
    "texture alone. Its area fraction is a learned proxy of the smoothed area, not a roughness measurement: "
    "ISO 25178 parameters such as Sa, Sq or the developed interfacial area ratio Sdr need a height map (AFM, "
    "confocal microscopy or stereo-SEM).")


def _resample_indices(labels_N, num_seeds, rng, num_bootstrap):
  """Bootstrap draws of seeds and of held-out images, the images resampled within each label.

  The held-out split is stratified by design (the same number of images per label), so the resampling is
  too: an interval then holds the noise of a rerun with new images and seeds, not of a different label mix.
  With a single image in some label, resampling within labels would hide all image noise, so the images are
  then resampled as one pool.
  """
  seeds = rng.integers(0, num_seeds, size=(num_bootstrap, num_seeds))
  by_label = [np.flatnonzero(labels_N == t) for t in np.unique(labels_N)]
  if min(len(idx) for idx in by_label) < 2:
    by_label = [np.arange(len(labels_N))]
  images = np.concatenate([idx[rng.integers(0, len(idx), size=(num_bootstrap, len(idx)))] for idx in by_label],
                          axis=1)
  return seeds, images


def _bootstrap_means(loss_SxN, draws):
  """Bootstrap distribution of the mean loss over the given (seed, image) draws."""
  seeds, images = draws
  return np.array([loss_SxN[s][:, i].mean() for s, i in zip(seeds, images)])


def _iou(counts):
  tp, fp, fn, tn = (float(np.sum(counts[k])) for k in ("tp", "fp", "fn", "tn"))
  smoothed = tp / max(tp + fp + fn, 1.0)
  rough = tn / max(tn + fn + fp, 1.0)
  return {"smoothed": smoothed, "rough": rough, "mean_iou": 0.5 * (smoothed + rough)}


def summarise(*, raw, hypotheses, num_seeds, final_targets, diverged, dataset, receptive_field, num_bootstrap,
              seed) -> dict:
  """The content of sweep.json from raw per-member evaluation arrays (see `sweep.run.evaluate_members`)."""
  num_labels = dataset.num_classes
  rng = np.random.default_rng(seed)
  manifest = dataset.manifest or {}
  f_true = np.asarray(manifest["f_true_values"], np.float64) if "f_true_values" in manifest else None
  rank_split = "val" if "val" in raw else "test"
  # One set of draws per split, shared by every hypothesis: differences between hypotheses are then paired.
  draws = {split: _resample_indices(r["label"], num_seeds, rng, num_bootstrap) for split, r in raw.items()}
  boot = {}

  rows = []
  for k, hyp in enumerate(hypotheses):
    members_k = members.hypothesis_members(k, num_seeds)
    alive = [m for m in members_k if not diverged[m]]
    row = hyp.to_json()
    row["learned"] = hyp.learned
    row["targets_per_seed"] = final_targets[members_k].tolist()
    row["targets"] = (final_targets[alive].mean(0) if alive else final_targets[members_k].mean(0)).tolist()
    row["diverged_seeds"] = [s for s, m in enumerate(members_k) if diverged[m]]
    row["diverged"] = not alive
    row["loss"], row["mean_mask"], row["iou"] = {}, {}, {}
    for split, r in raw.items():
      if not alive:
        continue
      loss_SxN = np.square(r["fraction"][alive] - r["target"][alive]).astype(np.float64)
      if len(alive) == num_seeds:
        boot[(hyp.name, split)] = _bootstrap_means(loss_SxN, draws[split])
        ci95 = np.percentile(boot[(hyp.name, split)], [2.5, 97.5]).tolist()
      else:  # some seeds diverged: resample the survivors alone
        ci95 = np.percentile(_bootstrap_means(loss_SxN, _resample_indices(
            r["label"], len(alive), rng, num_bootstrap)), [2.5, 97.5]).tolist()
      row["loss"][split] = {"mean": float(loss_SxN.mean()), "ci95": ci95,
                            "per_seed": loss_SxN.mean(1).tolist(), "num_images": int(loss_SxN.shape[1])}
      fraction_N = r["fraction"][alive].mean(0)
      row["mean_mask"][split] = [float(fraction_N[r["label"] == t].mean()) if np.any(r["label"] == t) else None
                                 for t in range(num_labels)]
      if "tp" in r:
        row["iou"][split] = _iou({c: r[c][alive] for c in ("tp", "fp", "fn", "tn")})
    if f_true is not None:
      row["rmse_to_f_true"] = float(np.sqrt(np.mean(np.square(np.asarray(row["targets"]) - f_true))))
    rows.append(row)

  ranked = sorted([r for r in rows if not r["diverged"] and rank_split in r["loss"]],
                  key=lambda r: r["loss"][rank_split]["mean"])
  for i, r in enumerate(ranked):
    r["rank"] = i + 1
  for r in rows:
    r.setdefault("rank", None)

  summary = {
      "labels": {"stress_times": dataset.stress_times.tolist(), "tau": dataset.tau.tolist(),
                 "names": list(dataset.label_names)},
      "data": {"root": dataset.root, "num_images": len(dataset.images), "image_shape": list(dataset.image_shape),
               "split_sizes": {s: int(len(raw[s]["index"])) for s in raw}, "skipped": list(dataset.skipped)},
      "receptive_field": int(receptive_field), "num_seeds": int(num_seeds), "rank_split": rank_split,
      "ranking_measure": "held-out proportion MSE, (mean mask - g(t))^2 per image",
      "hypotheses": rows, "ranking": [r["name"] for r in ranked],
      "what_the_mask_is": WHAT_THE_MASK_IS,
  }
  # The learned curve is an estimate of g, not a rival guess: the verdict is about the fixed hypotheses.
  summary.update(_verdict([r for r in ranked if not r["learned"]], rank_split))
  _paired_differences(ranked, summary["leader"], rank_split, boot)
  if f_true is not None:
    confounded = bool(manifest.get("confounded", False))
    summary["f_true"] = {"name": manifest.get("f_true"), "values": f_true.tolist(), "confounded": confounded}
    if confounded:
      # The smoothed area does not change with t here: no hypothesis of area is true, so none is "closest".
      summary["f_true"].update(closest_hypothesis=None, closest_rank=None, closest_ranked_first=None)
    else:
      closest = min(rows, key=lambda r: r["rmse_to_f_true"])
      summary["f_true"].update(closest_hypothesis=closest["name"], closest_rank=closest["rank"],
                               closest_ranked_first=closest["rank"] == 1)
  if "tp" in raw.get(rank_split, {}):
    smoothed = sum(float(np.sum(dataset.masks[i])) for i in raw[rank_split]["index"])
    pixels = len(raw[rank_split]["index"]) * float(np.prod(dataset.image_shape))
    summary["iou_all_smoothed_baseline"] = _iou({"tp": smoothed, "fp": pixels - smoothed, "fn": 0.0, "tn": 0.0})
  learned = [r for r in rows if r["learned"] and not r["diverged"]]
  if learned:
    r = learned[0]
    observed = [v for v in r["mean_mask"].get("train", [])]
    summary["learned_g"] = {"name": r["name"], "curve": r["targets"], "per_seed": r["targets_per_seed"],
                            "isotonic_fit_of_train_masks": (hypotheses_lib.isotonic_fit(observed).tolist()
                                                            if observed and None not in observed else None)}
  return summary


def _verdict(ranked, split):
  """Names a leader only where its interval is clear of every rival's; otherwise says the data do not tell."""
  if not ranked:
    return {"leader": None, "distinguishable": False, "tied_with_leader": [],
            "verdict": "every hypothesis diverged; nothing can be ranked"}
  lead = ranked[0]
  if len(ranked) == 1:
    # Without a rival there is no interval to be clear of; saying "fits best" would claim a comparison.
    return {"leader": lead["name"], "distinguishable": False, "tied_with_leader": [], "margin": None,
            "verdict": f"{lead['name']} is the only hypothesis ranked, so nothing was compared: add rivals to "
                       f"config.hypotheses to test it."}
  lead_hi = lead["loss"][split]["ci95"][1]
  tied = [r["name"] for r in ranked[1:] if r["loss"][split]["ci95"][0] <= lead_hi]
  margin = ranked[1]["loss"][split]["mean"] - lead["loss"][split]["mean"] if len(ranked) > 1 else None
  if tied:
    verdict = (f"The data do not tell {lead['name']} apart from {', '.join(tied)}: their 95% intervals of "
               f"{split} error overlap.")
  else:
    verdict = f"{lead['name']} fits best: its 95% interval of {split} error is clear of every other hypothesis."
  return {"leader": lead["name"], "distinguishable": not tied, "tied_with_leader": tied, "margin": margin,
          "verdict": verdict}


def _paired_differences(ranked, leader, split, boot):
  """Each hypothesis's excess error over the leader, with a paired 95% interval (same seeds and images)."""
  if leader is None or (leader, split) not in boot:
    return
  lead = next(r for r in ranked if r["name"] == leader)
  for r in ranked:
    if r is not lead and (r["name"], split) in boot:
      diff = boot[(r["name"], split)] - boot[(leader, split)]
      r["excess_over_leader"] = {"split": split, "mean": r["loss"][split]["mean"] - lead["loss"][split]["mean"],
                                 "ci95": np.percentile(diff, [2.5, 97.5]).tolist()}


def headline(summary) -> str:
  """One line for the terminal at the end of a sweep."""
  line = summary["verdict"]
  f = summary.get("f_true")
  if f and f["confounded"]:
    line += " Negative control: the stress time is carried by blur, not by the smoothed area."
  elif f:
    line += (f" Ground truth f_true={f['name']} is closest to {f['closest_hypothesis']}, ranked "
             f"{f['closest_rank']}.")
  return line
