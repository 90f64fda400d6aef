"""Figures of the classifier: confusion matrix (paper Figure 7), per-label accuracy (Figure 8), CAM overlays."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
