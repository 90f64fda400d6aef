"""Figures of the sweep and the classifier, drawn with matplotlib's Agg backend into the workdir."""
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SPLIT_STYLE = {"train": ("tab:blue", "o"), "val": ("tab:orange", "s"), "test": ("tab:green", "^")}


def save(fig, path) -> str:
  """Writes a figure as PNG atomically (a killed run never leaves half a picture)."""
  from copper_jax import workdir
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  workdir.atomic_write_bytes(path, buffer.getvalue())
  return path


def ranking_figure(summary):
  """Held-out error of each hypothesis with its 95% interval, best first (diverged ones listed apart)."""
  split = summary["rank_split"]
  rows = [r for r in summary["hypotheses"] if r["rank"] is not None]
  rows.sort(key=lambda r: r["rank"])
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
  means = np.array([r["loss"][split]["mean"] for r in rows])
  lo = means - np.array([r["loss"][split]["ci95"][0] for r in rows])
  hi = np.array([r["loss"][split]["ci95"][1] for r in rows]) - means
  y = np.arange(len(rows))[::-1]
  colors = ["tab:red" if r.get("learned") else "tab:blue" for r in rows]
  ax.errorbar(means, y, xerr=[lo, hi], fmt="none", ecolor="gray", capsize=3)
  ax.scatter(means, y, c=colors, zorder=3)
  ax.set_yticks(y, [r["name"] for r in rows])
  ax.set_xlabel(f"{split} error: mean (mask fraction - g(t))^2, 95% interval")
  if means.size and means.min() > 0:
    ax.set_xscale("log")
  truth = summary.get("f_true", {}).get("closest_hypothesis")
  for label in ax.get_yticklabels():
    if label.get_text() == truth:
      label.set_fontweight("bold")
  ax.set_title("Hypotheses ranked by held-out error" + (" (bold: closest to the true f)" if truth else ""))
  ax.grid(axis="x", alpha=0.3)
  return fig


def curves_figure(summary):
  """The paper's Figure 10: per hypothesis, the mean mask against t on each split over the target curve."""
  rows = sorted(summary["hypotheses"], key=lambda r: (r["rank"] is None, r["rank"] or 0))
  t = np.asarray(summary["labels"]["stress_times"])
  cols = min(4, len(rows))
  nrows = int(np.ceil(len(rows) / cols))
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.9 * nrows), squeeze=False, sharey=True)
  for ax, r in zip(axes.flat, rows):
    ax.plot(t, r["targets"], "k-", lw=1.5, label="g(t)")
    if "f_true" in summary:
      ax.plot(t, summary["f_true"]["values"], ":", color="gray", lw=1.2, label="true f")
    for split, points in r["mean_mask"].items():
      color, marker = SPLIT_STYLE[split]
      values = np.array([np.nan if v is None else v for v in points])
      ax.plot(t, values, marker=marker, ls="none", ms=4, color=color, label=split)
    title = f"#{r['rank']} {r['name']}" if r["rank"] else f"{r['name']} (diverged)"
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(rows):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, loc="upper left")
  for ax in axes[-1]:
    ax.set_xlabel("stress time t")
  for ax in axes[:, 0]:
    ax.set_ylabel("mean mask")
  fig.suptitle("Mean mask against stress time, per hypothesis (Figure 10)")
  fig.tight_layout()
  return fig


def overlays_figure(summary, dataset, overlay_idx, masks_MxIxHxW, members_shown):
  """The paper's Figure 9: held-out images with the masks of chosen members; ground truth outlined if known."""
  rows = len(members_shown) + 1
  cols = len(overlay_idx)
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
  for j, i in enumerate(overlay_idx):
    image = dataset.standardised(int(i))
    t = dataset.stress_times[dataset.labels[i]]
    axes[0, j].imshow(image, cmap="gray")
    axes[0, j].set_title(f"t={t:g}", fontsize=8)
    for row, (name, m) in enumerate(members_shown, start=1):
      ax = axes[row, j]
      ax.imshow(image, cmap="gray")
      ax.imshow(masks_MxIxHxW[m, j], cmap="magma", alpha=0.45, vmin=0, vmax=1)
      if dataset.masks is not None:
        ax.contour(dataset.masks[int(i)], levels=[0.5], colors="cyan", linewidths=0.6)
      if j == 0:
        ax.set_ylabel(name, fontsize=7)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("Held-out images and masks (bright = smoothed; cyan: true border where known)", fontsize=9)
  fig.tight_layout()
  return fig


def learned_figure(summary):
  """The learned g, per seed, next to the isotonic fit of its own masks and the true f where known."""
  learned = summary["learned_g"]
  t = np.asarray(summary["labels"]["stress_times"])
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for s, curve in enumerate(learned["per_seed"]):
    ax.plot(t, curve, "-", color="tab:red", alpha=0.4, lw=1, label="learned g, per seed" if s == 0 else None)
  ax.plot(t, learned["curve"], "-", color="tab:red", lw=2, label="learned g, mean")
  if learned.get("isotonic_fit_of_train_masks"):
    ax.plot(t, learned["isotonic_fit_of_train_masks"], "--", color="k", lw=1, label="isotonic fit of masks")
  if "f_true" in summary:
    ax.plot(t, summary["f_true"]["values"], ":", color="gray", lw=1.5, label="true f")
  ax.set_xlabel("stress time t")
  ax.set_ylabel("smoothed fraction")
  ax.set_ylim(-0.05, 1.05)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  ax.set_title("Hypothesis learned jointly with its model")
  return fig


def sweep_figures(work_dir, summary, dataset, overlay_idx, masks_MxIxHxW) -> dict:
  """Draws every sweep figure into `work_dir/figures`; returns name -> path."""
  out = os.path.join(work_dir, "figures")
  os.makedirs(out, exist_ok=True)
  paths = {}
  if summary["ranking"]:
    paths["ranking"] = save(ranking_figure(summary), os.path.join(out, "ranking.png"))
  paths["curves"] = save(curves_figure(summary), os.path.join(out, "mask_vs_t.png"))
  num_seeds = summary["num_seeds"]
  shown = [r for r in sorted(summary["hypotheses"], key=lambda r: (r["rank"] is None, r["rank"] or 0))
           if not r["diverged"]][:4]
  index = {r["name"]: k for k, r in enumerate(summary["hypotheses"])}
  members_shown = [(r["name"], index[r["name"]] * num_seeds) for r in shown]
  if len(overlay_idx) and members_shown:
    paths["overlays"] = save(overlays_figure(summary, dataset, overlay_idx, masks_MxIxHxW, members_shown),
                             os.path.join(out, "overlays.png"))
  if "learned_g" in summary:
    paths["learned_g"] = save(learned_figure(summary), os.path.join(out, "learned_g.png"))
  return paths
