"""From per-member, per-image evaluation arrays to the sweep's ranking, intervals and verdict: numpy in, dict out.

Ranking measure: held-out proportion MSE, (mean mask - g(t))^2 per image, whatever loss trained the models, so
hypotheses are compared on the paper's scale. Intervals (`stats.crossed_mean_interval`): seeds and held-out units
(images, or specimens where the data have several per label) both random, units compared within their label.
Every comparison between two members is paired: the same seeds, the same images.

The verdict (`verdict_rule.cross_fitted`): a fixed hypothesis "fits best" only when, chosen on one held-out split,
the paired 97.5% interval of every fixed rival's excess error over it lies above zero on the other split; the rivals
whose interval reaches zero are named as not told apart, with the evidence that would tell them apart
(`evidence`). Before any of that, the permuted-target control (`hypotheses.permuted_controls`) says whether the
errors mean anything. The ranking and `excess_over_leader` stay descriptive: 95% intervals on the ranking split.
"""
import dataclasses

import numpy as np

from copper_jax import evidence as evidence_lib
from copper_jax import hypotheses as hypotheses_lib
from copper_jax import members, stats, verdict_rule

SPLITS = ("train", "val", "test")
# How far a permuted-target control may explain more of its targets' variance than a model whose mean mask is affine
# in the leading curve could (room for training noise) before the control calls the model a reader of other cues.
CONTROL_MARGIN = 0.15

WHAT_THE_MASK_IS = (
    "The mask marks surface the model judges smoothed (low adhesion) from SEM secondary-electron intensity and "
    "texture alone. Its area fraction is a learned proxy of the smoothed area, not a roughness measurement: "
    "ISO 25178 parameters such as Sa, Sq or the developed interfacial area ratio Sdr need a height map (AFM, "
    "confocal microscopy or stereo-SEM). Fractions are on the hypothesis's scale: every hypothesis is pinned to 0 "
    "at the first stress time and 1 at the last (unless it sets lo/hi), so a mask fraction says where an image "
    "lies between the two ends of the series, not how much of its area is smoothed in absolute terms.")

CONTROL_FIRED = (
    "Warning: the model also fits targets whose order over the stress times is scrambled (the permuted-target "
    "control explains {share}). A model that reads only the local texture of "
    "smoothed and rough surface cannot do that, so this one reads the stress time from something else: blur or "
    "focus, brightness or contrast, an imaging session, magnification, or the overall smoothed fraction through a "
    "receptive field that is too large. Its errors then say nothing about how the smoothed area grows with t, and "
    "no hypothesis is named. Check the images for such differences between stress times, or use a model with a "
    "smaller receptive field.")


def _evidence_units(r, specimens):
  """(unit of each held-out image (U,), labels of the units, what a unit is): specimens when the data give several
  per label among these images, else images."""
  index, labels = r["index"], r["label"]
  if specimens is not None:
    spec = np.array([specimens[i] for i in index])
    per_label = [len(set(spec[labels == t])) for t in np.unique(labels)]
    if min(per_label) >= 2:
      names, unit = np.unique(spec, return_inverse=True)
      unit_labels = np.array([labels[np.flatnonzero(unit == u)[0]] for u in range(len(names))])
      return unit, unit_labels, "specimens"
  return np.arange(len(index)), labels, "images"


def _unit_means(loss_SxN, unit_N, num_units):
  """Per seed, the mean loss of each unit's images: (S, U)."""
  sums = np.zeros((loss_SxN.shape[0], num_units))
  np.add.at(sums, (slice(None), unit_N), loss_SxN)
  return sums / np.bincount(unit_N, minlength=num_units)[None, :]


def _interval(loss_SxN, unit_N, unit_labels):
  result = stats.crossed_mean_interval(_unit_means(loss_SxN, unit_N, len(unit_labels)), unit_labels)
  return {"mean": float(loss_SxN.mean()), "ci95": result["ci"], "se": result["se"], "df": result["df"]}


def _iou(counts):
  tp, fp, fn, tn = (float(np.sum(counts[k])) for k in ("tp", "fp", "fn", "tn"))
  smoothed = tp / max(tp + fp + fn, 1.0)
  rough = tn / max(tn + fn + fp, 1.0)
  return {"smoothed": smoothed, "rough": rough, "mean_iou": 0.5 * (smoothed + rough)}


def _on_pinned_scale(values_T):
  """Values rescaled so the first label is 0 and the last 1, the scale every default hypothesis is pinned to."""
  values_T = np.asarray(values_T, np.float64)
  span = values_T[-1] - values_T[0]
  return (values_T - values_T[0]) / span if abs(span) > 1e-12 else None


def _hypothesis_row(k, hyp, *, raw, units, num_seeds, final_targets, diverged, num_labels, f_true):
  """(row of sweep.json's "hypotheses" for hypothesis k, {split: (S, N) squared errors} when no seed diverged)."""
  members_k = members.hypothesis_members(k, num_seeds)
  all_seeds = list(range(num_seeds))
  alive = [s for s in all_seeds if not diverged[members_k[s]]]
  row = hyp.to_json()
  row.update(learned=hyp.learned, control=hyp.control)
  row["targets_per_seed"] = final_targets[members_k].tolist()
  kept = [members_k[s] for s in alive] or members_k
  row["targets"] = final_targets[kept].mean(0).tolist()
  row["diverged_seeds"] = [s for s in all_seeds if s not in alive]
  row["diverged"] = not alive
  row["loss"], row["mean_mask"], row["iou"] = {}, {}, {}
  losses = {}
  for split, r in raw.items():
    if not alive:
      continue
    kept = [members_k[s] for s in alive]
    loss_SxN = np.square(r["fraction"][kept] - r["target"][kept]).astype(np.float64)
    unit_N, unit_labels, _ = units[split]
    row["loss"][split] = {**_interval(loss_SxN, unit_N, unit_labels), "per_seed": loss_SxN.mean(1).tolist(),
                          "num_images": int(loss_SxN.shape[1])}
    if len(alive) == num_seeds:
      losses[split] = loss_SxN
    fraction_N = r["fraction"][kept].mean(0)
    row["mean_mask"][split] = [float(fraction_N[r["label"] == t].mean()) if np.any(r["label"] == t) else None
                               for t in range(num_labels)]
    if "tp" in r:
      row["iou"][split] = _iou({c: r[c][kept] for c in ("tp", "fp", "fn", "tn")})
  if f_true is not None:
    row["rmse_to_f_true"] = float(np.sqrt(np.mean(np.square(np.asarray(row["targets"]) - f_true))))
  return row, losses


def _ranks(rows, split) -> dict:
  """{name: rank} of the members that did not diverge and are not controls, by their `split` error."""
  ranked = sorted([r for r in rows if not r["diverged"] and not r["control"] and split in r["loss"]],
                  key=lambda r: r["loss"][split]["mean"])
  return {r["name"]: i + 1 for i, r in enumerate(ranked)}


def _learned_g(rows) -> dict | None:
  """The jointly learned curve with the isotonic fit of its own training masks, or None without one."""
  learned = [r for r in rows if r["learned"] and not r["diverged"]]
  if not learned:
    return None
  r = learned[0]
  observed = list(r["mean_mask"].get("train", []))
  return {"name": r["name"], "curve": r["targets"], "per_seed": r["targets_per_seed"],
          "isotonic_fit_of_train_masks": (hypotheses_lib.isotonic_fit(observed).tolist()
                                          if observed and None not in observed else None)}


def _all_smoothed_baseline(raw, split, dataset) -> dict | None:
  """The IoU of a mask calling every pixel smoothed, where the truth is known."""
  if "tp" not in raw.get(split, {}):
    return None
  smoothed = sum(float(np.sum(dataset.masks[i])) for i in raw[split]["index"])
  pixels = len(raw[split]["index"]) * float(np.prod(dataset.image_shape))
  return _iou({"tp": smoothed, "fp": pixels - smoothed, "fn": 0.0, "tn": 0.0})


def summarise(*, raw, hypotheses, num_seeds, final_targets, diverged, dataset, receptive_field) -> dict:
  """The content of sweep.json from raw per-member evaluation arrays (see `sweep.run.evaluate_members`)."""
  manifest = dataset.manifest or {}
  f_true = np.asarray(manifest["f_true_values"], np.float64) if "f_true_values" in manifest else None
  rank_split = "val" if "val" in raw else "test"
  specimens = getattr(dataset, "specimens", None)
  units = {split: _evidence_units(r, specimens) for split, r in raw.items()}
  built = [_hypothesis_row(k, hyp, raw=raw, units=units, num_seeds=num_seeds, final_targets=final_targets,
                           diverged=diverged, num_labels=dataset.num_classes, f_true=f_true)
           for k, hyp in enumerate(hypotheses)]
  losses = {(row["name"], split): loss for row, by_split in built for split, loss in by_split.items()}
  ranks = _ranks([row for row, _ in built], rank_split)
  rows = [dict(row, rank=ranks.get(row["name"])) for row, _ in built]
  ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])
  fixed = [r for r in ranked if not r["learned"]]
  leader = fixed[0]["name"] if fixed else None
  paired = _paired_excess(rows, leader, rank_split, losses, units[rank_split]) if leader else {}
  rows = [dict(r, excess_over_leader=paired[r["name"]]) if r["name"] in paired else r for r in rows]
  ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])
  fixed = [r for r in ranked if not r["learned"]]
  truth, on_scale = _truth(manifest, f_true, rows) if f_true is not None else (None, {})
  rows = [dict(r, rmse_to_f_true_on_scale=on_scale[r["name"]]) if r["name"] in on_scale else r for r in rows]

  unit_N, unit_labels, unit_kind = units[rank_split]
  evidence = _evidence(num_seeds, unit_kind, len(unit_labels), len(raw[rank_split]["index"]), unit_labels,
                       rank_split, specimens)
  control = _control(rows, leader, rank_split, raw[rank_split])
  rule, unit_losses = _cross_fitted(fixed, losses, units)
  verdict = _verdict(fixed, rank_split, paired, control, evidence, rule)
  needed, settle = _evidence_needed(verdict, control, rule, unit_losses, losses, units)
  verdict["verdict"] += settle
  adequacy = _adequacy(ranked, leader, paired)
  if adequacy["learned_fits_better"] and verdict["leader"]:
    verdict["verdict"] += (" But the learned curve fits clearly better than every listed hypothesis: none of the "
                           "listed hypotheses is adequate (the learned curve's values are in the report).")
  optional = {"f_true": truth, "iou_all_smoothed_baseline": _all_smoothed_baseline(raw, rank_split, dataset),
              "learned_g": _learned_g(rows)}
  return {
      "labels": {"stress_times": dataset.stress_times.tolist(), "tau": dataset.tau.tolist(),
                 "names": list(dataset.label_names)},
      "data": {"root": dataset.root, "num_images": len(dataset.images), "image_shape": list(dataset.image_shape),
               "split_sizes": {s: int(len(raw[s]["index"])) for s in raw}, "skipped": list(dataset.skipped)},
      "receptive_field": int(receptive_field), "num_seeds": int(num_seeds), "rank_split": rank_split,
      "ranking_measure": "held-out proportion MSE, (mean mask - g(t))^2 per image",
      "hypotheses": rows, "ranking": [r["name"] for r in ranked],
      "what_the_mask_is": WHAT_THE_MASK_IS,
      "evidence": evidence, "control": control, **verdict, "verdict_rule": rule, "evidence_needed": needed,
      "adequacy": adequacy,
      **{key: value for key, value in optional.items() if value is not None},
  }


def _paired_excess(rows, leader, split, losses, units) -> dict:
  """{name: excess error over the leader with its paired 95% interval}, for every member with all seeds alive."""
  if (leader, split) not in losses:
    return {}
  unit_N, unit_labels, _ = units
  return {r["name"]: {"split": split, **_interval(losses[(r["name"], split)] - losses[(leader, split)], unit_N,
                                                  unit_labels)}
          for r in rows if r["name"] != leader and (r["name"], split) in losses}


def _evidence(num_seeds, unit_kind, num_units, num_images, unit_labels, split, specimens) -> dict:
  what = f"{num_images} held-out ({split}) images" if unit_kind == "images" else (
      f"{num_units} held-out ({split}) specimens ({num_images} images)")
  text = f"{num_seeds} seed{'s' if num_seeds != 1 else ''}, {what} of {len(np.unique(unit_labels))} stress times"
  note = None
  if unit_kind == "images":
    note = ("The images are the units of evidence: several fields of view of one specimen are not independent "
            "samples of the etching process, so the verdict is about these specimens' fields of view. Lay the data "
            "out as <stress time>/<specimen>/<images> with several specimens per stress time to generalise.")
  return {"seeds": int(num_seeds), "units": unit_kind, "num_units": int(num_units), "num_images": int(num_images),
          "text": text, "note": note, "specimens_in_data": specimens is not None}


def _explained_share(row, split, labels_N):
  """1 - error / variance of the member's targets over the held-out images (its R^2), with the interval that
  follows from its error's, or None when the targets do not vary."""
  variance = float(np.var(np.asarray(row["targets"])[labels_N]))
  if variance <= 1e-12 or split not in row["loss"]:
    return None
  loss = row["loss"][split]
  return {"explained_share": 1.0 - loss["mean"] / variance,
          "ci95": [1.0 - loss["ci95"][1] / variance, 1.0 - loss["ci95"][0] / variance],
          "error": loss["mean"], "target_variance": variance}


def _affine_share(control_T, curve_T, labels_N) -> float:
  """The share of a control's target variance over the held-out images that the best affine function of `curve`
  explains (its squared correlation, images weighted as they fall in labels)."""
  x, y = np.asarray(curve_T)[labels_N], np.asarray(control_T)[labels_N]
  if np.std(x) < 1e-12 or np.std(y) < 1e-12:
    return 0.0
  return float(np.corrcoef(x, y)[0, 1] ** 2)


def _control(rows, leader, split, r) -> dict:
  """The permuted-target control, scored by the share of its targets' variance it explains on held-out images.

  A model that reads only local texture has a mean mask affine in the true fraction f(t), and the leading curves
  (the best fixed hypothesis and the learned curve) estimate f; such a model therefore explains of a control at most
  about what an affine function of those curves does (`expected`). The bar is that plus CONTROL_MARGIN. The control
  passes when the upper end of every control's 95% interval stays below its bar, fires when one's estimate reaches
  it, and is inconclusive otherwise (too few held-out images or seeds to tell). It is scored on its own error, not
  on its paired excess over the leader (reported too): a model that fits nothing would otherwise fit the controls
  "as well as" the leader.
  """
  controls = [row for row in rows if row["control"]]
  out = {"members": [c["name"] for c in controls], "split": split, "state": "not run", "fired": False,
         "ran": bool(controls), "margin": CONTROL_MARGIN}
  if not controls:
    out["text"] = "No permuted-target control ran (control.permutations=0, or fewer than 4 stress times)."
    return out
  out["orders"] = {c["name"]: c["params"]["values"] for c in controls}
  labels = r["label"]
  curves = [row["targets"] for row in rows if row["name"] == leader or (row["learned"] and not row["diverged"])]
  shares = {}
  for c in controls:
    share = _explained_share(c, split, labels)
    if share is None:
      continue
    share["expected_if_local"] = max((_affine_share(c["targets"], curve, labels) for curve in curves), default=0.0)
    share["bar"] = min(share["expected_if_local"] + CONTROL_MARGIN, 1.0)
    if "excess_over_leader" in c:
      share["excess_over_leader"] = c["excess_over_leader"]
    shares[c["name"]] = share
  out["per_member"] = shares
  if not shares or leader is None:
    out["text"] = "The control could not be scored: the leading hypothesis or every control member diverged."
    return out
  best = max(shares, key=lambda n: shares[n]["explained_share"] - shares[n]["bar"])
  share = shares[best]
  out.update(best=best, bar=share["bar"])
  figure = (f"{share['explained_share']:.0%} (95% interval {share['ci95'][0]:.0%} to {share['ci95'][1]:.0%}) of "
            f"its targets' variance, where a model reading the smoothed area would explain about "
            f"{share['expected_if_local']:.0%}")
  if share["explained_share"] >= share["bar"]:
    out["state"], out["fired"] = "fired", True
    out["text"] = CONTROL_FIRED.format(share=figure)
  elif any(m["ci95"][1] >= m["bar"] for m in shares.values()):
    out["state"] = "inconclusive"
    out["text"] = (f"The control is inconclusive: the permuted-target control {best} explains {figure}, and its "
                   "interval reaches that figure plus the margin. With these few held-out images or seeds it "
                   "cannot be ruled out that the model reads the stress time from something other than the "
                   "smoothed area, so no hypothesis is named; add held-out images (data.split) or seeds.")
  else:
    out["state"] = "passed"
    out["text"] = (f"Control passed: targets in a scrambled stress-time order are not fitted beyond what a model "
                   f"reading the smoothed area could do (the closest, {best}, explains {figure}).")
  return out


def _verdict(fixed, split, paired, control, evidence, rule=None) -> dict:
  """Names a leader only where the cross-fitted rule (`rule`, see `_cross_fitted`) confirms it and the control
  passed; without a rule (fewer than two fixed hypotheses scored with every seed), where every fixed rival's paired
  excess interval on `split` lies above zero."""
  over = f" Intervals are over {evidence['text']}."
  if not fixed:
    return {"leader": None, "distinguishable": False, "tied_with_leader": [],
            "verdict": "Every hypothesis diverged: nothing can be ranked; lower the learning rate."}
  lead = fixed[0]
  tied = [r["name"] for r in fixed[1:] if r["name"] not in paired or paired[r["name"]]["ci95"][0] <= 0]
  if rule is not None:
    tied, direction = _not_told_apart(rule, lead["name"], fixed)
  margin = fixed[1]["loss"][split]["mean"] - lead["loss"][split]["mean"] if len(fixed) > 1 else None
  if control["ran"] and control["state"] != "passed":
    return {"leader": None, "distinguishable": False, "tied_with_leader": [], "margin": margin,
            "verdict": control["text"] + over, "lowest_error": lead["name"]}
  if len(fixed) == 1:
    verdict = (f"Only {lead['name']} was tried: there is nothing to rank it against; add rival hypotheses to "
               "config.hypotheses.")
    return {"leader": lead["name"], "distinguishable": False, "tied_with_leader": [], "margin": None,
            "verdict": verdict + over}
  if rule is not None:
    verdict = _rule_sentence(rule, lead["name"], tied, direction)
  elif tied:
    verdict = (f"The data do not tell {lead['name']} apart from {', '.join(tied)}: the paired 95% interval of "
               f"their excess {split} error over {lead['name']} reaches zero.")
  else:
    verdict = (f"{lead['name']} fits best: every other listed hypothesis has a larger {split} error, each by a "
               "paired 95% interval above zero.")
  return {"leader": lead["name"], "distinguishable": not tied, "tied_with_leader": tied, "margin": margin,
          "verdict": verdict + over}


# The verdict's rule and the evidence it needs (copper_jax/verdict_rule.py, copper_jax/evidence.py).

def _cross_fitted(fixed, losses, units):
  """(`verdict_rule.cross_fitted` over the fixed hypotheses scored with every seed on every held-out split, in
  names and JSON, or None where fewer than two are; {"names", "losses": {split: (K, S, U) unit losses}} for the
  evidence needed). A held-out split of fewer than two units is left out (no interval can be had on it)."""
  held_out = [s for s in ("val", "test") if s in units and len(units[s][1]) >= 2]
  names = [r["name"] for r in fixed if held_out and all((r["name"], s) in losses for s in held_out)]
  if len(names) < 2:
    return None, {}
  unit_losses = {s: np.stack([_unit_means(losses[(n, s)], units[s][0], len(units[s][1])) for n in names])
                 for s in held_out}
  result = verdict_rule.cross_fitted(unit_losses, {s: units[s][1] for s in held_out})
  directions = [{"chosen_on": d["chosen_on"], "confirmed_on": d["confirmed_on"], "chosen": names[d["chosen"]],
                 "cleared": d["cleared"], "uncleared": [names[k] for k in d["uncleared"]],
                 "excess": {names[k]: {"mean": e["mean"], "ci": e["ci"]} for k, e in d["excess"].items()}}
                for d in result["directions"]]
  rule = {"rule": result["rule"], "level": result["level"], "false_naming": verdict_rule.FALSE_NAMING,
          "named": None if result["named"] is None else names[result["named"]], "directions": directions}
  return rule, {"names": names, "losses": unit_losses}


def _not_told_apart(rule, lead, fixed):
  """(the rivals the rule could not tell from `lead`, the direction that came closest to naming it)."""
  own = [d for d in rule["directions"] if d["chosen"] == lead]
  if not own:  # the leader was not scored with every seed: the rule could not judge it
    return [r["name"] for r in fixed if r["name"] != lead], None
  direction = min(own, key=lambda d: len(d["uncleared"]))
  return ([] if rule["named"] == lead else direction["uncleared"]), direction


def _rule_sentence(rule, lead, tied, direction) -> str:
  level = f"{rule['level']:.1%}".replace(".0%", "%")
  if direction is None:
    return (f"The data do not tell {lead} apart from {', '.join(tied)}: {lead} was not scored with every seed, so "
            "the verdict cannot judge it.")
  where = (f"chosen on the {direction['chosen_on']} images and confirmed on the {direction['confirmed_on']} images"
           if rule["rule"] == "cross-fitted" else
           f"chosen and confirmed on the {direction['chosen_on']} images, each interval widened for the choice")
  if tied:
    return (f"The data do not tell {lead} apart from {', '.join(tied)}: {where}, the paired {level} interval of "
            f"their excess error over {lead} reaches zero.")
  return (f"{lead} fits best: {where}, every other listed hypothesis has a larger error, each by a paired {level} "
          f"interval above zero (so a hypothesis that is not the best is named at most "
          f"{rule['false_naming']:.0%} of the time).")


def _evidence_needed(verdict, control, rule, unit_losses, losses, units) -> tuple[list, str]:
  """(`evidence_needed` rows, what the verdict adds): per rival not told apart from the leader and per control
  member not yet ruled out, the held-out units per stress time (at this run's seeds) and the seeds (at its units)
  that would settle it; the verdict carries them when it names nothing."""
  rows = []
  lead = verdict.get("leader") or verdict.get("lowest_error")
  names = unit_losses.get("names", [])
  if rule is not None and lead in names and control["state"] != "fired":
    tied, _ = _not_told_apart(rule, lead, [{"name": n} for n in names])
    held_out = list(unit_losses["losses"])
    have = min(evidence_lib.units_per_label(units[s][1]) for s in held_out)
    labels_U = np.concatenate([units[s][1] for s in held_out])
    word = units[held_out[0]][2]
    for name in tied:
      diff_SxU = np.concatenate([u[names.index(name)] - u[names.index(lead)] for u in unit_losses["losses"].values()],
                                axis=1)
      rows.append(evidence_lib.row(name, lead, "rival", float(diff_SxU.mean()), diff_SxU, labels_U, have,
                                   rule["level"], " and ".join(held_out), word))
  if control["state"] == "inconclusive":
    split = control["split"]
    unit_N, unit_labels, word = units[split]
    for name, share in control["per_member"].items():
      if share["ci95"][1] >= share["bar"] and (name, split) in losses:
        loss_SxU = _unit_means(losses[(name, split)], unit_N, len(unit_labels))
        effect = float(loss_SxU.mean()) - (1.0 - share["bar"]) * share["target_variance"]
        rows.append(evidence_lib.row(name, "its bar", "control", effect, loss_SxU, unit_labels,
                                     evidence_lib.units_per_label(unit_labels), 0.95, split, word))
  if rows and not verdict.get("distinguishable"):
    return rows, (f" Evidence that would settle it ({evidence_lib.POWER:.0%} power, projected from this run's seed "
                  "and image variation): " + "; ".join(r["text"] for r in rows) + ".")
  if control["state"] == "fired":
    return rows, " More held-out images or seeds would not change this: the control fired."
  return rows, ""


def _adequacy(ranked, leader, paired) -> dict:
  """Whether the jointly learned curve (a free monotone g) fits clearly better than the best fixed hypothesis."""
  learned = [r for r in ranked if r["learned"]]
  if not learned or leader is None or learned[0]["name"] not in paired:
    return {"learned_fits_better": False, "learned": None}
  excess = paired[learned[0]["name"]]
  return {"learned_fits_better": excess["ci95"][1] < 0, "learned": learned[0]["name"],
          "learned_excess_over_leader": excess, "learned_curve": learned[0]["targets"]}


def _truth(manifest, f_true, rows) -> tuple[dict, dict]:
  """Where the generator's true fraction is known: which fixed hypothesis is closest to it on the hypotheses' own
  pinned scale, and where it ranked among the fixed hypotheses; with {name: RMSE to it on that scale} of the fixed
  hypotheses."""
  confounded = bool(manifest.get("confounded", False))
  on_scale = None if confounded else _on_pinned_scale(f_true)
  out = {"name": manifest.get("f_true"), "values": f_true.tolist(), "confounded": confounded,
         "values_on_hypothesis_scale": None if on_scale is None else on_scale.tolist()}
  fixed = [r for r in rows if not r["learned"] and not r["control"]]
  if on_scale is None:
    # The smoothed area does not change with t here: no hypothesis of area is true, so none is "closest".
    return dict(out, closest_hypothesis=None, closest_rank=None, closest_ranked_first=None), {}
  rmse = {r["name"]: float(np.sqrt(np.mean(np.square(np.asarray(r["targets"]) - on_scale)))) for r in fixed}
  closest = min(fixed, key=lambda r: rmse[r["name"]])
  order = [r["name"] for r in sorted((r for r in fixed if r["rank"] is not None), key=lambda r: r["rank"])]
  rank = order.index(closest["name"]) + 1 if closest["name"] in order else None
  return dict(out, closest_hypothesis=closest["name"], closest_rank=rank, closest_ranked_first=rank == 1), rmse


def headline(summary) -> str:
  """One line for the terminal at the end of a sweep."""
  line = summary["verdict"]
  control = summary.get("control", {})
  if control.get("state") == "passed":
    line += " " + control["text"]
  f = summary.get("f_true")
  if f and f["confounded"]:
    line += " (Synthetic negative control: the stress time is carried by blur, not by the smoothed area.)"
  elif f:
    line += (f" (Synthetic ground truth f_true={f['name']}: closest fixed hypothesis {f['closest_hypothesis']}, "
             f"ranked {f['closest_rank']}.)")
  return line


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a job composing sweeps reads of one sweep's result: its permuted-target control and its best fixed
  hypothesis, with that hypothesis's held-out error (on `error_split`) and, where truth is known, mask quality."""
  control: str                      # passed | fired | inconclusive | not run
  control_share: float | None       # the share of its targets' variance the closest control explains
  control_ci95: list | None
  control_bar: float | None
  best_hypothesis: str | None       # the best-ranked fixed hypothesis
  best_error: float | None
  error_split: str
  best_mean_iou: float | None       # its masks' mean IoU against the truth (synthetic data)
  local_std_mean_iou: float | None  # the local-std filter's, for comparison


def outcome(summary: dict) -> Outcome:
  """The `Outcome` of a sweep from its summary (the content of sweep.json)."""
  split = summary["rank_split"]
  fixed = [h for h in summary["hypotheses"] if h["rank"] is not None and not h["learned"]]
  best = min(fixed, key=lambda h: h["rank"]) if fixed else None
  control = summary["control"]
  best_control = control.get("per_member", {}).get(control.get("best"), {})
  quality = summary.get("mask_quality", {})
  return Outcome(control=control["state"], control_share=best_control.get("explained_share"),
                 control_ci95=best_control.get("ci95"), control_bar=control.get("bar"),
                 best_hypothesis=best["name"] if best else None,
                 best_error=best["loss"][split]["mean"] if best else None, error_split=split,
                 best_mean_iou=quality.get("mean_iou", {}).get(best["name"], {}).get("single") if best else None,
                 local_std_mean_iou=quality.get("local_std_filter", {}).get("mean_iou"))
