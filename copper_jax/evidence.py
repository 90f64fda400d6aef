"""The evidence that would settle what a sweep left open: held-out units per stress time, or seeds, at which an
interval is expected to clear, projected from the seed and unit variation the sweep itself measured.

For a rival not told apart from the leader, the effect is its mean excess error over the leader on all held-out
units, and the interval that must clear is the verdict's (`verdict_rule`): on one held-out split, so the units are
counted per stress time in EACH of val and test. For an inconclusive permuted-target control, the effect is how far
its error lies above the error at which it would reach its bar, on the control's split. The variance components of
that difference (`stats.variance_components`) are carried to a larger design by `stats.projected_interval`, and the
smallest design is sought whose interval clears with probability POWER (`stats.chance_to_clear`).

What the projection takes as known and is not: the effect is this run's estimate, and the leader was chosen as the
lowest error, so the effect is on average a little flattering and the figures a little optimistic; with 2 seeds the
seed variance rests on one degree of freedom. They are a planning figure, not a promise.
"""
import numpy as np

from copper_jax import stats

POWER = 0.8
MAX_UNITS_PER_LABEL = 500  # beyond this the curves are too alike for the method to separate them
MAX_SEEDS = 50


def _smallest(clears, lo: int, hi: int):
  """The smallest n in [lo, hi] with clears(n), for clears monotone in n; None when even hi does not."""
  if not clears(hi):
    return None
  while lo < hi:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if clears(mid) else (mid + 1, hi)
  return lo


def needed(effect: float, components: dict, have_seeds: int, have_units_per_label: int, num_labels: int,
           level: float, power: float = POWER) -> dict:
  """Units per label at `have_seeds` seeds, and seeds at `have_units_per_label` units, at which a `level` interval
  around an effect of this size is expected to clear with probability `power`; None where no design within
  MAX_UNITS_PER_LABEL / MAX_SEEDS does (or, for seeds, where one seed gives no seed variance to project from)."""
  def clears(seeds, units):
    projected = stats.projected_interval(components, seeds, units, num_labels)
    return stats.chance_to_clear(effect, projected["se"], projected["df"], level) >= power

  units = _smallest(lambda n: clears(have_seeds, n), 2, MAX_UNITS_PER_LABEL) if effect != 0 else None
  seeds = None
  if components["var_seed"] is not None and effect != 0:
    seeds = _smallest(lambda s: clears(s, max(have_units_per_label, 2)), 2, MAX_SEEDS)
  return {"units_per_label": units, "seeds": seeds, "separable": units is not None or seeds is not None}


def row(name: str, against: str, kind: str, effect: float, loss_SxU, labels_U, have_units_per_label: int,
        level: float, split: str, unit_word: str) -> dict:
  """One `evidence_needed` row of sweep.json, with the sentence the verdict carries."""
  components = stats.variance_components(loss_SxU, labels_U)
  have_seeds = components["num_seeds"]
  out = {"name": name, "against": against, "kind": kind, "split": split, "effect": float(effect),
         "power": POWER, "level": level, "have_units_per_label": int(have_units_per_label),
         "have_seeds": int(have_seeds), "unit": unit_word,
         "components": {k: components[k] for k in ("var_seed", "var_unit", "var_resid")},
         **needed(effect, components, have_seeds, have_units_per_label, components["num_labels"], level)}
  out["text"] = describe(out)
  return out


def describe(r: dict) -> str:
  """'to tell A from B: about 9 held-out images per stress time in each of val and test at 2 seeds, or 4 seeds at
  2 images; this run has 2', or why no plausible amount would do."""
  unit, where = r["unit"], ("in each of val and test" if r["split"] == "val and test" else f"in {r['split']}")
  target = (f"to tell {r['name']} from {r['against']}" if r["kind"] == "rival"
            else f"to settle the control ({r['name']})")
  seeds_word = "seed" if r["have_seeds"] == 1 else "seeds"
  have = f"this run has {r['have_units_per_label']} at {r['have_seeds']} {seeds_word}"
  if not r["separable"]:
    if r["kind"] == "rival":
      return (f"{r['name']} and {r['against']}: the data cannot separate them: the curves are too alike for this "
              f"method (more than {MAX_UNITS_PER_LABEL} held-out {unit} per stress time would be needed; {have})")
    return (f"{target}: more than {MAX_UNITS_PER_LABEL} held-out {unit} per stress time would be needed: its "
            f"error sits too close to its bar for more data to settle it ({have})")
  parts = []
  if r["units_per_label"] is not None:
    parts.append(f"about {r['units_per_label']} held-out {unit} per stress time {where} at {r['have_seeds']} "
                 f"{seeds_word}")
  else:
    parts.append(f"more {unit} alone would not do at {r['have_seeds']} {seeds_word}")
  at = f"{max(r['have_units_per_label'], 2)} {unit}"
  if r["seeds"] is not None:
    parts.append(f"{r['seeds']} seeds at {at}")
  elif r["components"]["var_seed"] is not None:
    parts[-1] += f" (more seeds alone would not do at {at})"
  return f"{target}: {', or '.join(parts)}; {have}"


def units_per_label(labels_U) -> int:
  """The typical number of units per stress time (the median over the stress times present)."""
  _, counts = np.unique(np.asarray(labels_U), return_counts=True)
  return int(np.median(counts)) if len(counts) else 0
