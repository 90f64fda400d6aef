"""How often each verdict rule names a hypothesis that is not strictly best, and how often it names the truth when
the truth is best by a margin: simulated sweeps with known mean losses, numpy only, seconds per setting.

    python benchmarks/verdict_simulation.py [--sweeps=400] [--seed=0]

One simulated sweep: K = 7 fixed hypotheses, S seeds, 16 stress times, `units_per_label` held-out units per stress
time in each of val and test. Hypothesis k's loss on unit u for seed s is

    m_k * w(label) + b_u + h_ku + a_ks + e_ksu

with w a per-label profile of mean 1, b a unit effect shared by every hypothesis (an image hard for all), h a
hypothesis-by-unit effect (an image that suits one curve), a a hypothesis-by-seed effect (a training run that went
better for one curve) that is the SAME on val and test because the same models are scored on both, and e a skewed
residual. The true mean loss of hypothesis k is m_k, so "strictly best" is known. Rules compared:

  same split    today's: lowest val error, confirmed on val by every rival's paired 95% interval above zero;
  cross-fitted  `copper_jax.verdict_rule.cross_fitted`: chosen on val and confirmed on test by 97.5% intervals,
                or the reverse.
"""
import argparse

import numpy as np

from copper_jax import verdict_rule

NUM_LABELS = 16
BASE_LOSS = 0.006
STEP = 0.002  # the spacing of the rivals that are clearly worse
# name -> the 7 true mean losses' offsets from the best, given the truth's margin over the next two in the last
SCENARIOS = {
    "two tied": lambda margin: [0.0, 0.0, 1.0 * STEP, 2 * STEP, 3 * STEP, 4 * STEP, 5 * STEP],
    "three tied": lambda margin: [0.0, 0.0, 0.0, 2 * STEP, 3 * STEP, 4 * STEP, 5 * STEP],
    "best by a margin": lambda margin: [0.0, margin, margin * 1.1, 3 * STEP, 4 * STEP, 5 * STEP, 6 * STEP],
}
# name -> (sd of the hypothesis-by-seed effect, of the hypothesis-by-unit effect, of the residual)
# At 2 seeds and 2 units per stress time the first puts a tenth of a paired difference's variance in the seeds, the
# second half, the third most.
NOISE = {
    "images vary most": (0.0002, 0.002, 0.001),
    "seeds and images alike": (0.0005, 0.002, 0.001),
    "seeds vary most": (0.0015, 0.0015, 0.001),
}


def simulate_sweep(rng, mean_loss_K, num_seeds, units_per_label, seed_sd, unit_sd, noise_sd):
  """({"val": (K, S, U), "test": (K, S, U)} unit losses, labels_U) of one simulated sweep."""
  num_hypotheses = len(mean_loss_K)
  labels_U = np.repeat(np.arange(NUM_LABELS), units_per_label)
  profile_T = rng.uniform(0.5, 1.5, NUM_LABELS)
  profile_T /= profile_T.mean()
  seed_KxS = rng.normal(0.0, seed_sd, (num_hypotheses, num_seeds))
  losses = {}
  for split in ("val", "test"):
    shape = (num_hypotheses, num_seeds, len(labels_U))
    unit_U = rng.normal(0.0, 2 * unit_sd, len(labels_U))
    hyp_unit_KxU = rng.normal(0.0, unit_sd, (num_hypotheses, len(labels_U)))
    noise = (rng.gamma(2.0, 1.0, shape) - 2.0) * noise_sd / np.sqrt(2.0)
    losses[split] = (np.asarray(mean_loss_K)[:, None, None] * profile_T[labels_U][None, None, :]
                     + unit_U[None, None, :] + hyp_unit_KxU[:, None, :] + seed_KxS[:, :, None] + noise)
  return losses, labels_U


def rates(scenario, noise, num_sweeps, num_seeds=2, units_per_label=2, margin=STEP, rng_seed=0,
          false_naming=verdict_rule.FALSE_NAMING):
  """{rule: {"false": share of sweeps naming a hypothesis that is not strictly best, "truth": share naming the
  strictly best}} over `num_sweeps` simulated sweeps."""
  offsets_K = np.asarray(SCENARIOS[scenario](margin))
  mean_loss_K = BASE_LOSS + offsets_K
  best = np.flatnonzero(offsets_K == offsets_K.min())
  strictly_best = int(best[0]) if len(best) == 1 else None
  rng = np.random.default_rng(rng_seed)
  counts = {"same split": [0, 0], "cross-fitted": [0, 0]}
  for _ in range(num_sweeps):
    losses, labels_U = simulate_sweep(rng, mean_loss_K, num_seeds, units_per_label, *NOISE[noise])
    named = {"same split": verdict_rule.same_split(losses["val"], labels_U, 0.95, stop_early=True)["named"],
             "cross-fitted": verdict_rule.cross_fitted(losses, {"val": labels_U, "test": labels_U}, false_naming,
                                                       stop_early=True)["named"]}
    for rule, k in named.items():
      if k is not None:
        counts[rule][0 if k != strictly_best else 1] += 1
  return {rule: {"false": c[0] / num_sweeps, "truth": c[1] / num_sweeps} for rule, c in counts.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweeps", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--seeds", type=int, default=2, help="training seeds per simulated sweep")
  parser.add_argument("--units", type=int, default=2, help="held-out units per stress time in each of val and test")
  args = parser.parse_args(argv)
  print(f"{args.sweeps} simulated sweeps per row, K=7, {NUM_LABELS} stress times, {args.seeds} seeds, "
        f"{args.units} held-out units per stress time in each of val and test")
  print("| noise | scenario | same split: false / truth | cross-fitted: false / truth |")
  print("|---|---|---|---|")
  for noise in NOISE:
    for scenario in SCENARIOS:
      margin = 2 * STEP if noise == "seeds vary most" else STEP
      r = rates(scenario, noise, args.sweeps, args.seeds, args.units, margin=margin, rng_seed=args.seed)
      cells = " | ".join(f"{r[rule]['false']:.3f} / {r[rule]['truth']:.3f}" for rule in r)
      print(f"| {noise} | {scenario} | {cells} |", flush=True)


if __name__ == "__main__":
  main()
