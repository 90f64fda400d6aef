"""Figures of the sweep and the classifier, drawn with matplotlib's Agg backend into the workdir.

Sweep: the ranking, mean mask against t (the paper's Figure 10), masks on held-out images (Figure 9), the learned g.
Classifier: confusion matrix (Figure 7), per-label accuracy (Figure 8), CAM overlays.
"""
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from copper_jax import members  # noqa: E402
from copper_jax.store import workdir  # noqa: E402

SPLIT_STYLE = {"train": ("tab:blue", "o"), "val": ("tab:orange", "s"), "test": ("tab:green", "^")}


def save(fig, path) -> str:
  """Writes a figure as PNG atomically (a killed run never leaves half a picture)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  workdir.atomic_write_bytes(path, buffer.getvalue())
  return path


def ranking_figure(summary):
  """Held-out error of each hypothesis with its 95% interval, best first; the permuted-target controls below them."""
  split = summary["rank_split"]
  rows = [r for r in summary["hypotheses"] if r["rank"] is not None]
  rows.sort(key=lambda r: r["rank"])
  rows += [r for r in summary["hypotheses"] if r.get("control") and split in r["loss"]]
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
  means = np.array([r["loss"][split]["mean"] for r in rows])
  lo = means - np.array([r["loss"][split]["ci95"][0] for r in rows])
  hi = np.array([r["loss"][split]["ci95"][1] for r in rows]) - means
  y = np.arange(len(rows))[::-1]
  colors = ["tab:gray" if r.get("control") else "tab:red" if r.get("learned") else "tab:blue" for r in rows]
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
  ax.set_title("Hypotheses ranked by held-out error" + (" (bold: closest to the true f)" if truth else "")
               + "\ngray: permuted-target controls, which a sound model cannot fit", fontsize=9)
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
    title = (f"control {r['name']}" if r.get("control") else f"#{r['rank']} {r['name']}" if r["rank"]
             else f"{r['name']} (diverged)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(rows):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, loc="upper left")
  for ax in axes[-1]:
    ax.set_xlabel("stress time t")
  for ax in axes[:, 0]:
    ax.set_ylabel("mean mask (g scale: 0 at t_min, 1 at t_max)", fontsize=7)
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
  ax.set_ylabel("smoothed fraction (g scale)")
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
           if not r["diverged"] and not r.get("control")][:4]
  index = {r["name"]: k for k, r in enumerate(summary["hypotheses"])}
  members_shown = [(r["name"], members.member_index(index[r["name"]], 0, num_seeds)) for r in shown]
  if len(overlay_idx) and members_shown:
    paths["overlays"] = save(overlays_figure(summary, dataset, overlay_idx, masks_MxIxHxW, members_shown),
                             os.path.join(out, "overlays.png"))
  if "learned_g" in summary:
    paths["learned_g"] = save(learned_figure(summary), os.path.join(out, "learned_g.png"))
  return paths


def draw_confusion(ax, confusion_KxK, label_names, xlabel="predicted stress time"):
  """Draws a row-normalised confusion matrix (true label down, answer across) with the counts written in."""
  confusion_KxK = np.asarray(confusion_KxK)
  share_KxK = confusion_KxK / np.maximum(confusion_KxK.sum(axis=1, keepdims=True), 1)
  shown = ax.imshow(share_KxK, cmap="Blues", vmin=0, vmax=1)
  for (i, j), count in np.ndenumerate(confusion_KxK):
    if count:
      ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
              color="white" if share_KxK[i, j] > 0.6 else "black")
  ticks = np.arange(len(label_names))
  ax.set_xticks(ticks, label_names, rotation=90, fontsize=7)
  ax.set_yticks(ticks, label_names, fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("true stress time")
  return shown


def confusion_figure(confusion_KxK, label_names, title):
  """Row-normalised confusion matrix of the classifier (the paper's Figure 7)."""
  size = max(4.0, 0.38 * len(label_names) + 1.8)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  shown = draw_confusion(ax, confusion_KxK, label_names)
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
  ax.set_title(title, fontsize=9)
  return fig


def per_label_figure(per_label_accuracy, counts, label_names, title):
  """Accuracy per true stress time; labels without images are marked, not drawn as zero."""
  values = np.array([np.nan if a is None else a for a in per_label_accuracy], float)
  x = np.arange(len(label_names))
  fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(label_names) + 2), 3.4))
  ax.bar(x, np.nan_to_num(values), color="tab:blue")
  for i in np.flatnonzero(np.isnan(values)):
    ax.text(i, 0.02, "no images", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
  for i, n in enumerate(counts):
    ax.text(i, 1.01, str(n), ha="center", va="bottom", fontsize=6, color="gray")
  ax.set_xticks(x, label_names, rotation=90, fontsize=7)
  ax.set_ylim(0, 1.1)
  ax.set_xlabel("stress time (grey: images per label)")
  ax.set_ylabel("accuracy")
  ax.grid(axis="y", alpha=0.3)
  ax.set_title(title, fontsize=9)
  return fig


def cam_figure(image_HxW, cam_pred_HxW, cam_true_HxW, titles, suptitle):
  """The image and its class maps for the predicted and the true label, on one symmetric colour scale.

  Red marks evidence for the class, blue against; each map's spatial mean plus the class bias is its logit.
  """
  limit = float(max(np.abs(cam_pred_HxW).max(), np.abs(cam_true_HxW).max(), 1e-6))
  fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.5))
  axes[0].imshow(image_HxW, cmap="gray")
  axes[0].set_title(titles[0], fontsize=8)
  for ax, cam, title in zip(axes[1:], (cam_pred_HxW, cam_true_HxW), titles[1:]):
    ax.imshow(image_HxW, cmap="gray")
    shown = ax.imshow(cam, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55)
    ax.set_title(title, fontsize=8)
  fig.colorbar(shown, ax=list(axes), fraction=0.02, pad=0.02, label="class evidence per pixel")
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(suptitle, fontsize=9)
  return fig


def loss_curves_figure(records: list):
  """Training (and validation, where logged) loss against step, one panel per hypothesis: each seed thin, their
  mean thick, on a log scale; the title gives the median training speed. `records` are metrics.jsonl's lines."""
  curves = {}  # hypothesis -> split -> seed -> [(step, loss)]
  for record in records:
    for key, value in record.items():
      parts = key.split("/")
      if len(parts) == 4 and parts[1] == "loss" and value is not None and np.isfinite(value):
        split, _, hypothesis, seed = parts
        curves.setdefault(hypothesis, {}).setdefault(split, {}).setdefault(seed, []).append((record["step"], value))
  names = sorted(curves)
  cols = min(3, max(1, len(names)))
  rows = -(-max(1, len(names)) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False, sharex=True)
  for ax, name in zip(axes.flat, names):
    for split, by_seed in sorted(curves[name].items()):
      colour = SPLIT_STYLE.get(split, ("tab:gray", "o"))[0]
      for points in by_seed.values():
        ax.plot(*zip(*points), color=colour, lw=0.6, alpha=0.4)
      common = sorted(set.intersection(*[{s for s, _ in p} for p in by_seed.values()]))
      mean = [np.mean([dict(p)[s] for p in by_seed.values()]) for s in common]
      ax.plot(common, mean, color=colour, lw=1.8, label=f"{split} (mean of {len(by_seed)} seeds)" if len(by_seed) > 1 else split)
    ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  for ax in axes[-1]:
    ax.set_xlabel("step")
  for ax in axes[:, 0]:
    ax.set_ylabel("loss")
  speeds = [r["steps_per_second"] for r in records if r.get("steps_per_second")]
  speed = f"; median {np.median(speeds):.3g} steps/s" if speeds else ""
  fig.suptitle(f"Loss per hypothesis during training{speed}", fontsize=10)
  fig.tight_layout()
  return fig
