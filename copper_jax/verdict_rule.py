"""Which fixed hypothesis the held-out errors name, with a false-naming rate that holds after the leader is chosen.

Choosing the lowest of K errors and then asking, on the same images, whether every rival's excess over it lies above
zero leans towards naming: with two equally good hypotheses the one chosen is the one whose images happened to suit
it, so the other's excess interval lies above zero about twice as often as for a pair fixed in advance, and more
often still with several near-ties. Cross-fitting removes that lean. The held-out images come in two splits (val and
test) that share the seeds but no image: choose the leader on one split, then confirm it on the other, where the
choice did not look, by every rival's paired interval of excess error lying above zero. Both directions are tried
and a hypothesis is named when either confirms it, so every held-out image serves once to choose and once to
confirm. A hypothesis confirmed in either direction has the lowest error on both splits, so the two directions
never name different hypotheses.

The level: each direction's intervals are 97.5% (a lower tail of 1.25%). Were the images all the noise, a
direction's interval would be that of a pair fixed in advance, and a hypothesis that is not strictly best would be
named with probability at most 1.25% per direction. But the seeds are not split: the same trained models are scored
on both splits, so a seed that happened to suit the leader favours it on the confirming split too; were the seeds
all the noise, a direction would be choosing and confirming on the same evidence, which with two tied hypotheses
doubles the tail (2.5%). Two directions at most 2.5% each: at most 5% in all, measured by
`benchmarks/verdict_simulation.py` (docs/science.md, "A verdict that holds after choosing the leader").

With a single held-out split there is nothing to cross-fit: the leader is chosen and confirmed on the same images,
each rival's interval widened (Bonferroni over the K hypotheses that could be wrongly named) so that the rate
still holds after the choice.

Inputs are unit-level losses: `losses_KxSxU[k, s, u]` is hypothesis k's mean loss over held-out unit u (an image, or
a specimen's images) for seed s; `labels_U` the unit's stress time.
"""
import numpy as np

from copper_jax import stats

# The most often a verdict may name a hypothesis that is not strictly best. Cross-fitted, it buys 97.5% intervals
# in each direction (a lower tail of FALSE_NAMING / 4, at most doubled by the shared seeds, times two directions).
FALSE_NAMING = 0.05


def confirm(chosen: int, losses_KxSxU, labels_U, level: float, stop_early: bool = False) -> dict:
  """Whether every rival's paired `level` interval of excess loss over `chosen` lies above zero on these units.

  Returns `uncleared` (the rivals whose interval reaches zero, closest first) and `excess` ({rival: interval}).
  With `stop_early` the rivals are tried closest first and the first failure ends the search (simulations).
  """
  losses = np.asarray(losses_KxSxU, np.float64)
  means_K = losses.mean(axis=(1, 2))
  rivals = sorted((k for k in range(losses.shape[0]) if k != chosen), key=lambda k: means_K[k])
  uncleared, excess = [], {}
  for k in rivals:
    excess[k] = stats.crossed_mean_interval(losses[k] - losses[chosen], labels_U, level)
    if excess[k]["ci"][0] <= 0:
      uncleared.append(k)
      if stop_early:
        break
  return {"chosen": int(chosen), "cleared": not uncleared, "uncleared": uncleared, "excess": excess}


def cross_fitted(losses_by_split: dict, labels_by_split: dict, false_naming: float = FALSE_NAMING,
                 stop_early: bool = False) -> dict:
  """The hypothesis named by cross-fitting over two held-out splits, or by a Bonferroni-widened same-split rule
  when there is one.

  `losses_by_split[split]` is (K, S, U_split) with the same K hypotheses and S seeds in every split. Returns `named`
  (an index or None), `rule` ("cross-fitted" or "same split, Bonferroni"), the intervals' `level`, and
  `directions`: per direction the split chosen on, the split confirmed on, and `confirm`'s answer.
  """
  splits = list(losses_by_split)
  if not 1 <= len(splits) <= 2:
    raise ValueError(f"cross_fitted needs one or two held-out splits, got {splits}")
  num_hypotheses = np.shape(losses_by_split[splits[0]])[0]
  if num_hypotheses < 2:
    raise ValueError("naming a best hypothesis needs at least two hypotheses")
  if len(splits) == 1:
    (split,) = splits
    losses = losses_by_split[split]
    widened = 1.0 - 2.0 * false_naming / num_hypotheses  # a lower tail of false_naming / K each
    chosen = int(np.argmin(np.mean(losses, axis=(1, 2))))
    result = confirm(chosen, losses, labels_by_split[split], widened, stop_early)
    return {"named": chosen if result["cleared"] else None, "rule": "same split, Bonferroni", "level": widened,
            "directions": [{"chosen_on": split, "confirmed_on": split, **result}]}
  level = 1.0 - false_naming / 2.0
  directions = []
  for choose_on, confirm_on in (splits, splits[::-1]):
    chosen = int(np.argmin(np.mean(losses_by_split[choose_on], axis=(1, 2))))
    result = confirm(chosen, losses_by_split[confirm_on], labels_by_split[confirm_on], level, stop_early)
    directions.append({"chosen_on": choose_on, "confirmed_on": confirm_on, **result})
    if result["cleared"] and stop_early:
      break
  named = next((d["chosen"] for d in directions if d["cleared"]), None)
  return {"named": named, "rule": "cross-fitted", "level": level, "directions": directions}


def same_split(losses_KxSxU, labels_U, level: float = 0.95, stop_early: bool = False) -> dict:
  """The rule this module replaces, kept for comparison: choose the lowest error and confirm it on the same units
  at `level`, with no allowance for the choice."""
  chosen = int(np.argmin(np.mean(losses_KxSxU, axis=(1, 2))))
  result = confirm(chosen, losses_KxSxU, labels_U, level, stop_early)
  return {"named": chosen if result["cleared"] else None, **result}
